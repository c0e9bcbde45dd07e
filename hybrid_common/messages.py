"""The shape of a chat request's ``messages``, checked the same way by the gateway and the
nodes: a non-empty array of objects, each with a known role. What each accepts as
content differs (a node reads text only) and is theirs to check."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from hybrid_common.protocol import ROLES

ErrorFor = Callable[[str, str], Exception]
"""Builds the caller's 400 error from a message and the offending ``param``."""


def shown(value: object, limit: int = 40) -> str:
    """``value`` for an error message, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def checked_messages(
    messages: object, error: ErrorFor
) -> Iterator[tuple[str, Mapping[str, object], str]]:
    """Each message as ``(param, message, role)``; raises ``error(...)`` at the first one
    that is not an object with a known role."""
    if messages is None:
        raise error("messages is required.", "messages")
    if not isinstance(messages, list):
        raise error("messages must be an array.", "messages")
    if not messages:
        raise error("messages must contain at least one message.", "messages")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise error(f"{where} must be an object.", where)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise error(
                f"{where}.role must be one of {', '.join(sorted(ROLES))}; got {shown(role)}.",
                f"{where}.role",
            )
        yield where, message, role


__all__ = ["ErrorFor", "checked_messages", "shown"]
