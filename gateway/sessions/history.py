"""How stored history and the messages a client sends combine into one conversation.

The rule (documented in docs/sessions.md):

1. Leading ``system``/``developer`` messages are the request's system prompt. They go
   first in what the upstream sees and are never stored: send them with every request.
2. The other client messages (``rest``) are matched against the stored turns:

   - nothing stored: ``rest`` is the conversation, and all of it is new;
   - the stored turns appear in ``rest`` as one run (the client resends its whole
     history, possibly longer than the capped store): ``rest`` is the conversation and
     only what follows the run is new;
   - the newest stored turns are the start of ``rest`` (the client sends a window):
     the older stored turns go in front, only what follows the overlap is new;
   - ``rest`` holds no assistant turn (the usual session client: just the new message):
     the stored turns go in front and all of ``rest`` is new;
   - otherwise the histories diverged (an edited or regenerated turn): the client's
     history wins, for this request and in the store, which is replaced by ``rest``
     and the reply.

   Repeats are never doubled: a turn the store has is not stored again.
3. When the store could not be read, nothing is known about it: ``rest`` is sent as is
   and only the messages after its last assistant turn are new (never a replacement).

Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.sessions.turns import identity
from hybrid_common.protocol import ChatMessage

SYSTEM_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Merged:
    system: list[ChatMessage]
    """The request's own system prompt (leading system/developer messages)."""
    turns: list[ChatMessage]
    """The conversation after the system prompt, oldest first, as the upstream sees it."""
    new: list[ChatMessage]
    """The client's messages to store with the reply."""
    replace: bool
    """The stored history is replaced by ``turns`` + the reply (the client's history won)."""
    stored_used: int
    """Stored turns put in front of the client's messages."""

    @property
    def messages(self) -> list[ChatMessage]:
        return [*self.system, *self.turns]


def split_system(messages: Sequence[ChatMessage]) -> tuple[list[ChatMessage], list[ChatMessage]]:
    index = 0
    while index < len(messages) and messages[index].get("role") in SYSTEM_ROLES:
        index += 1
    return list(messages[:index]), list(messages[index:])


def merge(
    stored: Sequence[ChatMessage], client: Sequence[ChatMessage], *, known: bool = True
) -> Merged:
    """Combine ``stored`` turns with the ``client``'s messages; ``known`` is False when the
    store could not be read (``stored`` is then whatever this replica still holds)."""
    system, rest = split_system(client)
    has_assistant = any(m.get("role") == "assistant" for m in rest)
    if not known and has_assistant:
        last = max(i for i, m in enumerate(rest) if m.get("role") == "assistant")
        return Merged(system=system, turns=rest, new=rest[last + 1 :], replace=False, stored_used=0)
    if not stored:
        return Merged(system=system, turns=rest, new=rest, replace=False, stored_used=0)
    stored_ids = [identity(m) for m in stored]
    rest_ids = [identity(m) for m in rest]
    end = _end_of_last_run(stored_ids, rest_ids)
    if end is not None:
        return Merged(system=system, turns=rest, new=rest[end:], replace=False, stored_used=0)
    overlap = _longest_overlap(stored_ids, rest_ids)
    if overlap:
        older = list(stored[: len(stored) - overlap])
        return Merged(
            system=system,
            turns=[*older, *rest],
            new=rest[overlap:],
            replace=False,
            stored_used=len(older),
        )
    if not has_assistant:
        return Merged(
            system=system,
            turns=[*stored, *rest],
            new=rest,
            replace=False,
            stored_used=len(stored),
        )
    return Merged(system=system, turns=rest, new=rest, replace=True, stored_used=0)


def _end_of_last_run(needle: Sequence[object], haystack: Sequence[object]) -> int | None:
    """Index just past the last occurrence of ``needle`` as a run in ``haystack``."""
    size = len(needle)
    for start in range(len(haystack) - size, -1, -1):
        if haystack[start : start + size] == needle:
            return start + size
    return None


def _longest_overlap(stored: Sequence[object], rest: Sequence[object]) -> int:
    """The largest k such that the last k stored turns are the first k of ``rest``."""
    for k in range(min(len(stored), len(rest)), 0, -1):
        if stored[len(stored) - k :] == rest[:k]:
            return k
    return 0
