"""The local spool: appends that could not reach Redis, kept in order until they can.

In-process and per gateway replica, bounded in turns. When full, the oldest appends are
dropped (and counted) to make room: a long outage loses the oldest history first, never
the newest. Replaying is safe to repeat because every append is idempotent per request id
and content, and it respects deletions because every append carries the generation its
request loaded (see :mod:`gateway.sessions.store`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from gateway.sessions.keys import SessionRef
from gateway.sessions.store import UNKNOWN_GENERATION
from gateway.sessions.turns import StoredTurn


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingAppend:
    """One request's turns, as the store's ``append`` takes them."""

    session: SessionRef
    request_id: str
    turns: tuple[StoredTurn, ...]
    replace: bool = False
    digest: str | None = None
    generation: int = UNKNOWN_GENERATION


class Spool:
    """A bounded FIFO of pending appends; ``max_turns`` may change (policy reload)."""

    def __init__(self, max_turns: int) -> None:
        self.max_turns = max_turns
        self._entries: deque[PendingAppend] = deque()
        self._turns = 0

    def __len__(self) -> int:
        """Number of pending appends."""
        return len(self._entries)

    def __iter__(self) -> Iterator[PendingAppend]:
        return iter(self._entries)

    @property
    def turns(self) -> int:
        """Number of pending turns (what ``max_turns`` bounds)."""
        return self._turns

    def push(self, entry: PendingAppend) -> int:
        """Queue ``entry`` behind the others; returns how many turns were dropped for room."""
        if len(entry.turns) > self.max_turns:
            return len(entry.turns)  # could never fit: drop it rather than everything else
        dropped = 0
        while self._entries and self._turns + len(entry.turns) > self.max_turns:
            dropped += self._remove_head()
        self._entries.append(entry)
        self._turns += len(entry.turns)
        return dropped

    def head(self) -> PendingAppend | None:
        return self._entries[0] if self._entries else None

    def done(self, entry: PendingAppend) -> None:
        """``entry`` was written: remove it, if it is still at the head.

        It may not be: a push that needed room can drop the head while it was being written.
        """
        if self._entries and self._entries[0] is entry:
            self._remove_head()

    def pending_for(self, session: SessionRef) -> tuple[list[StoredTurn], bool]:
        """Turns of ``session`` not yet written, oldest first, and whether one of the
        pending appends replaces the stored history (which then no longer counts)."""
        turns: list[StoredTurn] = []
        replaces = False
        for entry in self._entries:
            if entry.session == session:
                if entry.replace:
                    turns.clear()
                    replaces = True
                turns.extend(entry.turns)
        return turns, replaces

    def discard(self, session: SessionRef) -> int:
        """Forget the session's pending appends (the session was erased); returns turns."""
        kept = deque(entry for entry in self._entries if entry.session != session)
        removed = self._turns - sum(len(entry.turns) for entry in kept)
        self._entries = kept
        self._turns -= removed
        return removed

    def _remove_head(self) -> int:
        entry = self._entries.popleft()
        self._turns -= len(entry.turns)
        return len(entry.turns)
