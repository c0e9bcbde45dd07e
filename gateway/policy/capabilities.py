"""What a node can do beyond plain chat: the policy's vocabulary for it. Pure, no I/O.

A request that uses a feature a node does not implement must never be answered by that
node as if the feature were not there (an edge node that ignores ``tools`` invents an
answer instead of calling one). So each tier (or node) declares what it ``supports`` in
the policy, :func:`gateway.routing.needs.request_needs` reads what a request needs from
its body, and only nodes that support all of it are asked.

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
from typing import Final, Literal, get_args

from gateway.policy.reader import PolicyReader, join_key
from hybrid_common.protocol import Tier

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
    "TOOLS_SHORTHAND",
    "TOOL_CHOICES",
    "Capability",
    "parse_needs",
    "parse_supports",
]
