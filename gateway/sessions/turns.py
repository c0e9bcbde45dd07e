"""One stored turn: a chat message plus where it came from, as JSON in Redis.

Text is repaired where a message becomes a turn (:func:`turn_of`): a lone surrogate (from
a node's reply, say) becomes U+FFFD, so every turn can be encoded as UTF-8 and stored.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Final, Required, TypedDict, cast

from gateway.text import replace_surrogates, scrub_surrogates
from hybrid_common.protocol import ChatMessage, ContentPart, message_text

log = logging.getLogger("gateway.sessions")

_MESSAGE_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id")
_INTERNAL_FIELDS = ("digest",)
DIGEST_HEX_CHARS: Final = 16


class StoredTurn(TypedDict, total=False):
    """A message as stored; ``request_id``, ``tier`` and ``model`` say where it came from."""

    role: Required[str]
    content: str | list[ContentPart] | None
    name: str
    tool_calls: list[dict[str, object]]
    tool_call_id: str
    request_id: str
    digest: str
    """:func:`content_digest` of the request that stored it (internal: the session API
    does not show it)."""
    tier: str
    model: str
    at: Required[float]
    """Unix time (seconds) when the turn was recorded."""


def turn_of(
    message: ChatMessage,
    *,
    at: float,
    request_id: str,
    digest: str | None = None,
    tier: str | None = None,
    model: str | None = None,
) -> StoredTurn:
    """The message as a turn; text UTF-8 cannot encode is repaired (never the message)."""
    fields: dict[str, object] = {}
    for name in _MESSAGE_FIELDS:
        if name not in message:
            continue
        value = message[name]  # type: ignore[literal-required]
        if isinstance(value, str):
            fields[name] = replace_surrogates(value)
        elif isinstance(value, list | dict):
            value = copy.deepcopy(value)  # repaired in place: a copy, not the message's own
            scrub_surrogates(value)
            fields[name] = value
        else:
            fields[name] = value
    turn = cast(StoredTurn, fields)
    turn["at"] = at
    turn["request_id"] = request_id
    if digest is not None:
        turn["digest"] = digest
    if tier is not None:
        turn["tier"] = tier
    if model is not None:
        turn["model"] = model
    return turn


def message_of(turn: StoredTurn) -> ChatMessage:
    """The turn as a chat message for an upstream: the wire fields only."""
    return cast(ChatMessage, {k: turn[k] for k in _MESSAGE_FIELDS if k in turn})  # type: ignore[literal-required]


def public(turn: StoredTurn) -> StoredTurn:
    """The turn as the session API shows it (without internal fields)."""
    if not any(name in turn for name in _INTERNAL_FIELDS):
        return turn
    return cast(StoredTurn, {k: v for k, v in turn.items() if k not in _INTERNAL_FIELDS})


def content_digest(messages: Sequence[ChatMessage]) -> str:
    """What a request asked, as a short hash: a retry sends the same messages, so it has the
    same digest; another turn sent under the same request id does not."""
    canonical = json.dumps(messages, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:DIGEST_HEX_CHARS]


def identity(message: ChatMessage | StoredTurn) -> tuple[str, str]:
    """What makes two messages "the same turn" when a client resends its history.

    Role and text only: clients round-trip content as a string or as text parts, and
    drop or add fields like ``name``, so a stricter comparison would miss real repeats.
    """
    return str(message.get("role")), message_text(cast(ChatMessage, message))


def encode(turn: StoredTurn) -> bytes:
    """UTF-8 JSON; raises UnicodeEncodeError for text :func:`turn_of` did not repair."""
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
