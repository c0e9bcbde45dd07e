"""The bounded local spool (pure)."""

from __future__ import annotations

from gateway.sessions.keys import SessionRef
from gateway.sessions.spool import PendingAppend, Spool


def entry(session: str, request: str, turns: int = 2, *, replace: bool = False) -> PendingAppend:
    return PendingAppend(
        session=SessionRef(session),
        request_id=request,
        turns=tuple({"role": "user", "content": f"{request}-{i}", "at": 0.0} for i in range(turns)),
        replace=replace,
    )


def test_fifo_and_turn_count() -> None:
    spool = Spool(10)
    first, second = entry("s", "r1"), entry("s", "r2")
    assert spool.push(first) == 0 and spool.push(second) == 0
    assert spool.head() is first and spool.turns == 4 and len(spool) == 2
    spool.done(first)
    assert spool.head() is second and spool.turns == 2


def test_full_spool_drops_the_oldest_and_reports_them() -> None:
    spool = Spool(4)
    spool.push(entry("s", "r1"))
    spool.push(entry("s", "r2"))
    assert spool.push(entry("s", "r3")) == 2
    assert [e.request_id for e in spool] == ["r2", "r3"]
    assert spool.turns == 4


def test_an_entry_bigger_than_the_spool_is_dropped_itself() -> None:
    spool = Spool(4)
    spool.push(entry("s", "r1"))
    assert spool.push(entry("s", "huge", turns=5)) == 5
    assert [e.request_id for e in spool] == ["r1"]


def test_zero_capacity_keeps_nothing() -> None:
    spool = Spool(0)
    assert spool.push(entry("s", "r1")) == 2
    assert len(spool) == 0


def test_done_ignores_an_entry_that_was_dropped_while_being_written() -> None:
    spool = Spool(4)
    writing = entry("s", "r1")
    spool.push(writing)
    spool.push(entry("s", "r2"))
    spool.push(entry("s", "r3"))  # drops r1, which the replayer is writing
    spool.done(writing)
    assert [e.request_id for e in spool] == ["r2", "r3"]


def test_pending_for_a_session_respects_replacements() -> None:
    spool = Spool(100)
    spool.push(entry("s", "r1"))
    spool.push(entry("other", "x1"))
    assert [t["content"] for t in spool.pending_for(SessionRef("s"))[0]] == ["r1-0", "r1-1"]
    spool.push(entry("s", "r2", replace=True))
    turns, replaces = spool.pending_for(SessionRef("s"))
    assert replaces and [t["content"] for t in turns] == ["r2-0", "r2-1"]


def test_discard_forgets_one_session() -> None:
    spool = Spool(100)
    spool.push(entry("s", "r1"))
    spool.push(entry("other", "x1"))
    spool.push(entry("s", "r2"))
    assert spool.discard(SessionRef("s")) == 4
    assert [e.request_id for e in spool] == ["x1"] and spool.turns == 2


def test_sessions_of_different_owners_are_different_sessions() -> None:
    spool = Spool(100)
    mine, theirs = SessionRef("s", "owner-a"), SessionRef("s", "owner-b")
    spool.push(PendingAppend(session=mine, request_id="r1", turns=entry("s", "r1").turns))
    spool.push(PendingAppend(session=theirs, request_id="r2", turns=entry("s", "r2").turns))
    assert [t["content"] for t in spool.pending_for(mine)[0]] == ["r1-0", "r1-1"]
    assert spool.pending_for(SessionRef("s"))[0] == []
    assert spool.discard(theirs) == 2
    assert [e.request_id for e in spool] == ["r1"]
