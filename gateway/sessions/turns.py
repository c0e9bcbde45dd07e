"""One stored turn: a chat message plus where it came from, as JSON in Redis."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Required, TypedDict, cast

from gateway.protocol import ChatMessage, ContentPart, message_text

log = logging.getLogger("gateway.sessions")

_MESSAGE_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id")


class StoredTurn(TypedDict, total=False):
    """A message as stored; ``request_id``, ``tier`` and ``model`` say where it came from."""

    role: Required[str]
    content: str | list[ContentPart] | None
    name: str
    tool_calls: list[dict[str, object]]
    tool_call_id: str
    request_id: str
    tier: str
    model: str
    at: Required[float]
    """Unix time (seconds) when the turn was recorded."""


def turn_of(
    message: ChatMessage,
    *,
    at: float,
    request_id: str,
    tier: str | None = None,
    model: str | None = None,
) -> StoredTurn:
    turn = cast(StoredTurn, {k: message[k] for k in _MESSAGE_FIELDS if k in message})  # type: ignore[literal-required]
    turn["at"] = at
    turn["request_id"] = request_id
    if tier is not None:
        turn["tier"] = tier
    if model is not None:
        turn["model"] = model
    return turn


def message_of(turn: StoredTurn) -> ChatMessage:
    """The turn as a chat message for an upstream: the wire fields only."""
    return cast(ChatMessage, {k: turn[k] for k in _MESSAGE_FIELDS if k in turn})  # type: ignore[literal-required]


def identity(message: ChatMessage | StoredTurn) -> tuple[str, str]:
    """What makes two messages "the same turn" when a client resends its history.

    Role and text only: clients round-trip content as a string or as text parts, and
    drop or add fields like ``name``, so a stricter comparison would miss real repeats.
    """
    return str(message.get("role")), message_text(cast(ChatMessage, message))


def encode(turn: StoredTurn) -> bytes:
    return json.dumps(turn, ensure_ascii=False, separators=(",", ":")).encode()


def decode_all(items: Iterable[bytes | str]) -> list[StoredTurn]:
    """Decode a stored list, skipping (and logging) entries that are not turns."""
    turns: list[StoredTurn] = []
    for item in items:
        try:
            value = json.loads(item)
        except ValueError:
            log.warning("skipping a stored turn that is not JSON (%d bytes)", len(item))
            continue
        if not isinstance(value, dict) or not isinstance(value.get("role"), str):
            log.warning("skipping a stored turn without a role")
            continue
        if not isinstance(value.get("at"), int | float):
            value["at"] = 0.0
        turns.append(cast(StoredTurn, value))
    return turns


def messages_of(turns: Sequence[StoredTurn]) -> list[ChatMessage]:
    return [message_of(turn) for turn in turns]
