"""What a chat request needs of a node beyond plain text chat. Pure, no I/O.

The capabilities (and which request field needs each) are the policy's vocabulary,
:mod:`gateway.policy.capabilities`; only nodes that support all a request needs are asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from gateway.policy.capabilities import TOOL_CHOICES, Capability

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
    return RequestNeeds(params=tuple(found.items())) if found else NO_NEEDS


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


__all__ = ["NO_NEEDS", "RequestNeeds", "request_needs"]
