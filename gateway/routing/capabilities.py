"""What a node can do beyond plain chat, and what a request needs of it. Pure, no I/O.

A request that uses a feature a node does not implement must never be answered by that
node as if the feature were not there (an edge node that ignores ``tools`` invents an
answer instead of calling one). So each tier (or node) declares what it ``supports`` in
the policy, :func:`request_needs` reads what a request needs from its body, and only
nodes that support all of it are asked.

The vocabulary (:data:`CAPABILITIES`), and what needs each one:

========================  ==============================================================
``tool_choice_auto``      ``tools`` with ``tool_choice`` ``"auto"`` or absent (the model
                          decides). vLLM: ``--enable-auto-tool-choice --tool-call-parser``
                          and a chat template that shows the tools to the model.
``tool_choice_required``  ``tools`` with ``tool_choice: "required"``. vLLM 0.32 forces the
                          call with grammar-constrained decoding, whatever the model
                          knows, but only once a tool-call parser is loaded
                          (``vllm/renderers/online_renderer.py``).
``tool_choice_function``  ``tools`` with ``tool_choice`` naming one function: as above.
``functions``             the legacy ``functions`` / ``function_call`` fields (vLLM drops
                          them unread: declare it only for a node that implements them).
``json_object``           ``response_format: {"type": "json_object"}``
``json_schema``           ``response_format: {"type": "json_schema", ...}``
``images``                ``image_url`` content parts (a vision model)
``audio``                 ``input_audio`` content parts (an audio model)
``logprobs``              ``logprobs: true`` or ``top_logprobs`` above 0
``logit_bias``            a non-empty ``logit_bias``
``n``                     ``n`` above 1
========================  ==============================================================

``tools`` with ``tool_choice: "none"`` needs nothing: no call may be made, so a node that
cannot call tools answers it faithfully. In a policy, ``tools`` is shorthand for the three
``tool_choice_*`` capabilities.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, get_args

from gateway.protocol import Tier
from gateway.routing.policy_reader import PolicyReader, join_key

Capability = Literal[
    "tool_choice_auto",
    "tool_choice_required",
    "tool_choice_function",
    "functions",
    "json_object",
    "json_schema",
    "images",
    "audio",
    "logprobs",
    "logit_bias",
    "n",
]
CAPABILITIES: Final[tuple[Capability, ...]] = get_args(Capability)
TOOL_CHOICES: Final[frozenset[Capability]] = frozenset(
    {"tool_choice_auto", "tool_choice_required", "tool_choice_function"}
)
TOOLS_SHORTHAND: Final = "tools"

DEFAULT_SUPPORTS: Final[Mapping[Tier, frozenset[Capability]]] = {
    # The llama.cpp edge node (edge_node/schema.py) serves plain text chat, one choice, and
    # answers 400 to every field below instead of ignoring it.
    "edge": frozenset(),
    # vLLM as cloud_node's bundled profiles start it: structured outputs, logprobs, several
    # choices, and forced tool calls (a tool-call parser is loaded). Not tool_choice "auto":
    # SmolLM2's chat template never shows the tools to the model, so it would never call
    # one. Not images or audio: the shipped models are text-only.
    "cloud": frozenset(
        {
            "tool_choice_required",
            "tool_choice_function",
            "json_object",
            "json_schema",
            "logprobs",
            "logit_bias",
            "n",
        }
    ),
}

DESCRIPTIONS: Final[Mapping[Capability, str]] = {
    "tool_choice_auto": 'tools with tool_choice "auto" (the default when tools are sent)',
    "tool_choice_required": 'tools with tool_choice "required"',
    "tool_choice_function": "tools with a tool_choice that names a function",
    "functions": "the legacy functions/function_call fields (use tools)",
    "json_object": 'response_format {"type": "json_object"}',
    "json_schema": 'response_format {"type": "json_schema"}',
    "images": "image content parts",
    "audio": "audio content parts",
    "logprobs": "logprobs",
    "logit_bias": "logit_bias",
    "n": "n > 1",
}

_PART_NEEDS: Final[Mapping[str, Capability]] = {"image_url": "images", "input_audio": "audio"}
_FORMAT_NEEDS: Final[Mapping[str, Capability]] = {
    "json_object": "json_object",
    "json_schema": "json_schema",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestNeeds:
    """The capabilities one request needs, each with the request field that needs it."""

    params: tuple[tuple[Capability, str], ...] = ()
    """(capability, param) in the order the fields appear; a capability appears once."""

    @property
    def needs(self) -> frozenset[Capability]:
        return frozenset(need for need, _ in self.params)

    @property
    def has_tools(self) -> bool:
        """The request may be answered with tool calls (``tool_choice`` is not none)."""
        return any(need in TOOL_CHOICES or need == "functions" for need, _ in self.params)

    def __bool__(self) -> bool:
        return bool(self.params)

    def param(self, need: Capability) -> str:
        return next(param for n, param in self.params if n == need)

    def first_missing(self, supports: frozenset[Capability]) -> Capability | None:
        """The first need (in request order) that ``supports`` lacks; None when none."""
        return next((need for need, _ in self.params if need not in supports), None)


NO_NEEDS: Final = RequestNeeds()


def request_needs(body: Mapping[str, object]) -> RequestNeeds:
    """What ``body`` (a chat request, as sent upstream) needs beyond plain text chat.

    Reads shapes defensively: a malformed field needs nothing here, and the node it goes
    to rejects it with its own 400 (the gateway validates only what it reads itself).
    """
    found: dict[Capability, str] = {}

    def need(capability: Capability, param: str) -> None:
        found.setdefault(capability, param)

    tool_need = _tool_choice_need(body.get("tools"), body.get("tool_choice", "auto"))
    if tool_need is not None:
        need(tool_need, "tools")
    functions = body.get("functions")
    if isinstance(functions, list) and functions and body.get("function_call") != "none":
        need("functions", "functions")
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if isinstance(kind, str) and kind in _FORMAT_NEEDS:
            need(_FORMAT_NEEDS[kind], "response_format")
    if body.get("logprobs") is True:
        need("logprobs", "logprobs")
    top = body.get("top_logprobs")
    if isinstance(top, int) and not isinstance(top, bool) and top > 0:
        need("logprobs", "top_logprobs")
    bias = body.get("logit_bias")
    if isinstance(bias, dict) and bias:
        need("logit_bias", "logit_bias")
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        need("n", "n")
    messages = body.get("messages")
    for index, message in enumerate(messages if isinstance(messages, list) else ()):
        content = message.get("content") if isinstance(message, dict) else None
        for part_index, part in enumerate(content if isinstance(content, list) else ()):
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(kind, str) and kind in _PART_NEEDS:
                need(_PART_NEEDS[kind], f"messages[{index}].content[{part_index}]")
    return RequestNeeds(params=tuple(found.items()))


def _tool_choice_need(tools: object, choice: object) -> Capability | None:
    if not isinstance(tools, list) or not tools:
        return None
    if choice is None or choice == "auto":
        return "tool_choice_auto"
    if choice == "required":
        return "tool_choice_required"
    if isinstance(choice, dict):
        return "tool_choice_function"
    return None  # "none" needs nothing; an invalid value is the node's to reject


def parse_supports(
    r: PolicyReader, m: Mapping[str, object], path: str, default: frozenset[Capability]
) -> frozenset[Capability]:
    """The ``supports`` list of a tier or node at ``path``; ``default`` when absent."""
    if "supports" not in m:
        return default
    return _capabilities(r, m, path, "supports")


def parse_needs(r: PolicyReader, m: Mapping[str, object], path: str) -> frozenset[Capability]:
    """A rule's ``needs`` condition: capabilities the request must need, all of them."""
    if "needs" not in m:
        return frozenset()
    needs = _capabilities(r, m, path, "needs")
    if not needs:
        raise r.fail(join_key(path, "needs"), "must list at least one capability")
    return needs


def _capabilities(
    r: PolicyReader, m: Mapping[str, object], path: str, key: str
) -> frozenset[Capability]:
    where = join_key(path, key)
    allowed = (TOOLS_SHORTHAND, *CAPABILITIES)
    out: set[Capability] = set()
    for index, item in enumerate(r.listing(m, path, key)):
        if item == TOOLS_SHORTHAND:
            out |= TOOL_CHOICES
        elif item in CAPABILITIES:
            out.add(item)
        else:
            raise r.fail(f"{where}[{index}]", f"must be one of {', '.join(allowed)}, got {item!r}")
    return frozenset(out)


__all__ = [
    "CAPABILITIES",
    "DEFAULT_SUPPORTS",
    "DESCRIPTIONS",
    "NO_NEEDS",
    "TOOL_CHOICES",
    "Capability",
    "RequestNeeds",
    "parse_needs",
    "parse_supports",
    "request_needs",
]
