"""Sessions for the chat handler and the session API: open, load, merge, record, view, erase.

This module serves requests; the store's health and the outage spool's replay live in
:mod:`gateway.sessions.replay`, whose :class:`~gateway.sessions.replay.SpoolReplayer` is
the base of :class:`SessionService`. While the store counts as down, requests stop waiting
on it (no history, ``x-gateway-session-warning: store-unavailable``) and their turns go to
the spool. While the spool is not empty, new turns queue behind it, so a session's turns
reach Redis in the order the answers were given; this replica also merges a session's
pending turns into what it loads.

Sessions are addressed by :class:`~gateway.sessions.keys.SessionRef`: the client's id in
the namespace of the caller's API key, so one caller never sees another's sessions.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Final, TypedDict

from gateway.metrics import GatewayMetrics
from gateway.policy.model import Policy, SessionsSpec
from gateway.sessions.conversation import Conversation, SessionWarning
from gateway.sessions.errors import SessionNotFound, SessionsDisabled, SessionStoreUnavailable
from gateway.sessions.history import merge
from gateway.sessions.keys import SESSION_HEADER, SessionRef, check_session_id
from gateway.sessions.replay import SpoolReplayer
from gateway.sessions.spool import PendingAppend
from gateway.sessions.store import (
    UNKNOWN_GENERATION,
    AppendOutcome,
    SessionStore,
    Snapshot,
    StoreRejected,
    StoreUnavailable,
)
from gateway.sessions.turns import StoredTurn, content_digest, messages_of, public, turn_of
from gateway.telemetry import Tracing, disabled_tracing
from hybrid_common.protocol import ChatCompletionRequest, ChatMessage, Tier

log = logging.getLogger("gateway.sessions")

SHUTDOWN_FLUSH_S: Final = 2.0
"""How long a stopping gateway keeps writing its spool out before giving up on it."""


def tombstone_s(policy: Policy) -> int:
    """How long a deletion keeps refusing appends loaded before it: at least the longest
    request (``fallback.timeouts_s.total``), and a session's lifetime (``sessions.ttl_s``)
    for turns that wait out an outage in a spool."""
    return max(policy.sessions.ttl_s, math.ceil(policy.fallback.timeouts.total_s), 1)


class SessionView(TypedDict):
    """``GET /v1/sessions/{id}``."""

    id: str
    object: str
    turns: list[StoredTurn]
    ttl: int | None
    """Seconds before the session expires (refreshed by every append)."""


class SessionService(SpoolReplayer):
    def __init__(
        self,
        *,
        store: SessionStore | None,
        spec: Callable[[], SessionsSpec],
        metrics: GatewayMetrics,
        tracing: Tracing | None = None,
    ) -> None:
        super().__init__(store=store, spec=spec, metrics=metrics)
        self.tracing = tracing if tracing is not None else disabled_tracing()
        self._recording: set[asyncio.Task[None]] = set()
        """Appends under way; a client that leaves does not cancel them (see _record)."""

    @property
    def enabled(self) -> bool:
        return self.store is not None

    async def start(self) -> None:
        """Check the store once; a store that is down at start-up is not fatal."""
        if self.store is None:
            log.info("sessions disabled: REDIS_URL is not set")
            return
        try:
            await self.store.ping(timeout_s=self.spec().redis_timeout_s)
        except StoreUnavailable as exc:
            self._failed(exc)  # logs it; the replayer keeps trying

    # -- chat requests -------------------------------------------------------------------

    def session_id_of(
        self, headers: Mapping[str, str], chat: ChatCompletionRequest, spec: SessionsSpec
    ) -> str | None:
        """The request's session id (``x-session-id``, else ``user`` when the policy says so)."""
        header = headers.get(SESSION_HEADER)
        if header is not None:
            return check_session_id(header, param=SESSION_HEADER)
        user = chat.get("user")
        if spec.id_from_user and isinstance(user, str):
            return check_session_id(user, param="user")
        return None

    async def open(
        self,
        headers: Mapping[str, str],
        chat: ChatCompletionRequest,
        *,
        request_id: str,
        policy: Policy,
        owner: str | None = None,
    ) -> Conversation | None:
        """The request's conversation, or None when it names no session.

        ``owner`` is the caller's (see :func:`~gateway.sessions.keys.owner_of_key`): the
        session id names a session in that caller's namespace only.
        """
        spec = policy.sessions
        session_id = self.session_id_of(headers, chat, spec)
        if session_id is None:
            return None
        session = SessionRef(session_id, owner)
        warning: SessionWarning | None = None
        known = True
        stored: list[StoredTurn] = []
        generation = UNKNOWN_GENERATION
        with self.tracing.span("gateway.session.load") as span:
            outcome = "ok"
            if self.store is None:
                warning, outcome = "sessions-disabled", "disabled"
            else:
                was_available = self.available
                try:
                    snapshot = await self._load(session, spec)
                except StoreUnavailable as exc:
                    warning, known = "store-unavailable", False
                    stored = self.spool.pending_for(session)[0]
                    # skipped: the store was known to be down and was not asked at all
                    outcome = (
                        "rejected"
                        if isinstance(exc, StoreRejected)
                        else "unavailable"
                        if was_available
                        else "skipped"
                    )
                else:
                    stored, generation = snapshot.turns, snapshot.generation
            if span.is_recording():
                span.set_attributes(
                    {
                        "gen_ai.conversation.id": session_id,
                        "gateway.session.present": bool(stored),
                        "gateway.session.turns": len(stored),
                        "gateway.session.store": outcome,
                    }
                )
        # A retry of this request sees what the first attempt saw, not its own turns; a
        # different turn sent under the same request id is not a retry and sees them.
        digest = content_digest(chat["messages"])
        stored = [turn for turn in stored if not _same_request(turn, request_id, digest)]
        # The max_turns cap can cut a pair in two; chat templates that insist on starting
        # with a user turn would reject what is left of it.
        while stored and stored[0].get("role") != "user":
            stored.pop(0)
        return Conversation(
            session=session,
            request_id=request_id,
            digest=digest,
            generation=generation,
            merged=merge(messages_of(stored), chat["messages"], known=known),
            policy=policy,
            warning=warning,
            recorder=self._record if self.store is not None else None,
            on_dropped=self._count_dropped,
        )

    async def _load(self, session: SessionRef, spec: SessionsSpec) -> Snapshot:
        """Stored turns plus this replica's pending ones; raises StoreUnavailable."""
        if self.store is None or not self.available:
            raise StoreUnavailable("load", "store is down")
        started = time.perf_counter()
        try:
            snapshot = await self.store.load(session, timeout_s=spec.redis_timeout_s)
        except StoreRejected as exc:
            self._rejected(exc)  # this session's key is unusable; the store is fine
            raise
        except StoreUnavailable as exc:
            self._failed(exc)
            raise
        self.metrics.session_store_s.labels("load").observe(time.perf_counter() - started)
        turns = self._with_pending(session, snapshot.turns)
        return Snapshot(turns=turns, generation=snapshot.generation)

    def _with_pending(self, session: SessionRef, turns: list[StoredTurn]) -> list[StoredTurn]:
        pending, replaces = self.spool.pending_for(session)
        if not pending:
            return turns
        if replaces:
            return pending
        written = {turn.get("request_id") for turn in turns}
        return [*turns, *(t for t in pending if t.get("request_id") not in written)]

    async def _record(
        self, conversation: Conversation, reply: ChatMessage, tier: Tier, model: str | None
    ) -> None:
        """Store the turns; a client that leaves meanwhile does not cancel this.

        The answer is complete when this is called: cancelling the append half-way (the
        handler is cancelled when its client hangs up) would lose a turn the client has.
        """
        task = asyncio.create_task(self._record_now(conversation, reply, tier, model))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)
        await asyncio.shield(task)

    async def _record_now(
        self, conversation: Conversation, reply: ChatMessage, tier: Tier, model: str | None
    ) -> None:
        store = self.store
        if store is None:
            return
        with self.tracing.span("gateway.session.append") as span:
            try:
                outcome, turns = await self._append(store, conversation, reply, tier, model)
            except Exception as exc:
                # The boundary of a side effect: the answer stands; the turns are lost.
                self.metrics.session_dropped_turns.inc(len(conversation.merged.new) + 1)
                log.error(
                    "session %s: turns not stored after an unexpected %s",
                    conversation.session.log_id,
                    type(exc).__name__,
                )
                outcome, turns = "error", 0
            if span.is_recording():
                span.set_attributes(
                    {
                        "gen_ai.conversation.id": conversation.session_id,
                        "gateway.session.turns": turns,
                        "gateway.session.store": outcome,
                        "gateway.session.replace": conversation.merged.replace,
                    }
                )

    async def _append(
        self,
        store: SessionStore,
        conversation: Conversation,
        reply: ChatMessage,
        tier: Tier,
        model: str | None,
    ) -> tuple[str, int]:
        """Write (or spool) the turns; returns (``ok``, ``duplicate``, ``erased``,
        ``rejected`` or ``spooled``, the number of turns)."""
        spec = conversation.policy.sessions
        now = time.time()
        rid, digest = conversation.request_id, conversation.digest
        turns = [turn_of(m, at=now, request_id=rid, digest=digest) for m in conversation.merged.new]
        turns.append(turn_of(reply, at=now, request_id=rid, digest=digest, tier=tier, model=model))
        entry = PendingAppend(
            session=conversation.session,
            request_id=rid,
            turns=tuple(turns),
            replace=conversation.merged.replace,
            digest=digest,
            generation=conversation.generation,
        )
        if self.available and not self.spool:
            started = time.perf_counter()
            try:
                outcome = await self._write(store, entry, spec)
            except StoreRejected as exc:
                self._rejected(exc, dropped=len(entry.turns))
                return "rejected", len(entry.turns)
            except StoreUnavailable as exc:
                self._failed(exc)
            else:
                self.metrics.session_store_s.labels("append").observe(time.perf_counter() - started)
                if outcome is AppendOutcome.ERASED:
                    self._erased(entry)
                return str(outcome), len(entry.turns)
        self._spool(entry, spec)
        return "spooled", len(entry.turns)

    def _count_dropped(self, tier: Tier, dropped: int) -> None:
        self.metrics.session_context_dropped.labels(tier).inc(dropped)

    async def aclose(self) -> None:
        """Finish the appends under way and flush what the spool holds (briefly), then
        close the connections."""
        if self.store is None:
            return
        try:
            async with asyncio.timeout(SHUTDOWN_FLUSH_S):
                if self._recording:
                    await asyncio.wait(set(self._recording))
                if self.spool:
                    await self.drain()
        except TimeoutError:
            pass
        if self.spool:
            log.warning("stopping with %d session turns not written", self.spool.turns)
        await self.store.aclose()

    # -- the session API -----------------------------------------------------------------

    async def view(self, session: SessionRef) -> SessionView:
        store = self._require_store()
        spec = self.spec()
        try:
            snapshot = await store.snapshot(session, timeout_s=spec.redis_timeout_s)
        except StoreUnavailable as exc:
            self._failed(exc)
            raise SessionStoreUnavailable("The session store is unavailable; retry later.") from exc
        turns = self._with_pending(session, snapshot.turns)
        if not turns:
            raise _not_found(session)
        return SessionView(
            id=session.session_id,
            object="session",
            turns=[public(turn) for turn in turns],
            ttl=snapshot.ttl_s,
        )

    async def erase(self, session: SessionRef, *, policy: Policy) -> None:
        """Delete the session's stored and pending turns; SessionNotFound if it had none.

        Appends of requests in flight (and in any spool) that loaded the session before
        this are refused for :func:`tombstone_s`: the deletion holds. One gap remains
        (docs/sessions.md): a request that loaded while Redis was down knows no generation,
        so its append is not refused.
        """
        store = self._require_store()
        pending = self.spool.discard(session)  # first, so a replay cannot bring them back
        self.metrics.session_spool_turns.set(self.spool.turns)
        try:
            existed = await store.delete(
                session, tombstone_s=tombstone_s(policy), timeout_s=self.spec().redis_timeout_s
            )
        except StoreUnavailable as exc:
            self._failed(exc)
            raise SessionStoreUnavailable("The session store is unavailable; retry later.") from exc
        if not existed and not pending:
            raise _not_found(session)

    def _require_store(self) -> SessionStore:
        if self.store is None:
            raise SessionsDisabled("Sessions are disabled on this gateway (REDIS_URL is not set).")
        return self.store


def _not_found(session: SessionRef) -> SessionNotFound:
    # The same answer whether the id is free or another caller's: existence is not revealed.
    return SessionNotFound(f"No session {session.session_id!r}.", param="session_id")


def _same_request(turn: StoredTurn, request_id: str, digest: str) -> bool:
    """Whether ``turn`` was stored by this very request (an earlier attempt of a retry).

    Turns stored before digests existed match on the request id alone.
    """
    return turn.get("request_id") == request_id and turn.get("digest", digest) == digest
