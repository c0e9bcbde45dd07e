"""The session store's health and the outage spool's replay: the half of sessions that
runs in the background, under :class:`~gateway.sessions.service.SessionService`.

After a failed call the store counts as down (:attr:`SpoolReplayer.available` is False):
the service stops waiting on it and hands its turns to the spool (:meth:`_spool`). The
replayer (:meth:`SpoolReplayer.run_replay`, a background task) pings with backoff, and once
Redis answers it writes the spool out in order (:meth:`SpoolReplayer.drain`). It survives
what it did not expect: an append that fails in an unexpected way is set aside (logged with
the session's hash, counted as poisoned) and the spool goes on.

:class:`SpoolReplayer` is the base of ``SessionService``, which serves requests (load,
record, view, erase) and reports the store's failures here; this module knows nothing of
requests, conversations or the session API.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Final

from gateway.metrics import GatewayMetrics
from gateway.policy.model import SessionsSpec
from gateway.sessions.spool import PendingAppend, Spool
from gateway.sessions.store import AppendOutcome, SessionStore, StoreRejected, StoreUnavailable

log = logging.getLogger("gateway.sessions")

REPLAY_BACKOFF_MIN_S: Final = 0.05
REPLAY_BACKOFF_MAX_S: Final = 2.0


class SpoolReplayer:
    """The store's last known health, the spool of turns waiting out an outage, and the
    background task that writes them out once the store is back."""

    def __init__(
        self,
        *,
        store: SessionStore | None,
        spec: Callable[[], SessionsSpec],
        metrics: GatewayMetrics,
    ) -> None:
        self.store = store
        self.spec = spec
        self.metrics = metrics
        self.spool = Spool(spec().spool_max_turns)
        self.available = store is not None
        """Last known state of the store; False from a failed call until a ping succeeds."""
        self._wake = asyncio.Event()

    def _spool(self, entry: PendingAppend, spec: SessionsSpec) -> None:
        self.spool.max_turns = spec.spool_max_turns
        dropped = self.spool.push(entry)
        self.metrics.session_spooled_turns.inc(len(entry.turns))
        if dropped:
            self.metrics.session_dropped_turns.inc(dropped)
            log.warning("session spool full: dropped the %d oldest pending turns", dropped)
        self.metrics.session_spool_turns.set(self.spool.turns)
        self._wake.set()

    def _rejected(self, exc: StoreRejected, *, dropped: int = 0) -> None:
        """Redis refused one call: count it (and the turns it cost) without spooling them,
        since a retry would fail the same way and block the spool behind it."""
        self.metrics.session_store_errors.labels(exc.op).inc()
        if dropped:
            self.metrics.session_dropped_turns.inc(dropped)
            log.error("%s; %d turns not stored", exc, dropped)
        else:
            log.error("%s", exc)

    def _erased(self, entry: PendingAppend) -> None:
        self.metrics.session_erased_appends.inc()
        log.info(
            "session %s was deleted while request %s was answered: its turns are not stored",
            entry.session.log_id,
            entry.request_id,
        )

    def _poisoned(self, entry: PendingAppend, exc: Exception) -> None:
        """An append that failed in a way no retry would fix: set it aside, say so."""
        self.spool.done(entry)
        self.metrics.session_spool_poisoned.inc()
        self.metrics.session_dropped_turns.inc(len(entry.turns))
        self.metrics.session_spool_turns.set(self.spool.turns)
        # The session's hash and the error's type only: the message may quote the text.
        log.error(
            "session spool: set aside request %s of session %s (%d turns) after an unexpected %s",
            entry.request_id,
            entry.session.log_id,
            len(entry.turns),
            type(exc).__name__,
        )

    def _failed(self, exc: StoreUnavailable) -> None:
        self.metrics.session_store_errors.labels(exc.op).inc()
        if self.available:
            log.warning("%s; serving without history and spooling turns until it is back", exc)
        self.available = False
        self._wake.set()

    async def _write(
        self, store: SessionStore, entry: PendingAppend, spec: SessionsSpec
    ) -> AppendOutcome:
        return await store.append(
            entry.session,
            entry.request_id,
            entry.turns,
            digest=entry.digest,
            generation=entry.generation,
            replace=entry.replace,
            ttl_s=spec.ttl_s,
            max_turns=spec.max_turns,
            timeout_s=spec.redis_timeout_s,
        )

    async def drain(self) -> bool:
        """Write the spool out, oldest first; True when it is empty, False on a store error.

        An append that fails unexpectedly (say, text that cannot be encoded) would fail the
        same way on every try and hold up everything behind it: it is set aside and counted
        (:meth:`_poisoned`) and the others go on.
        """
        store = self.store
        while store is not None and (entry := self.spool.head()) is not None:
            spec = self.spec()  # outside the try: a failure here is not the entry's fault
            try:
                outcome: AppendOutcome | None = await self._write(store, entry, spec)
                _honour_cancellation()
            except StoreRejected as exc:
                self._rejected(exc, dropped=len(entry.turns))
                outcome = None
            except StoreUnavailable as exc:
                self._failed(exc)
                return False
            except Exception as exc:
                self._poisoned(entry, exc)
                continue
            self.spool.done(entry)
            if outcome is AppendOutcome.WRITTEN:  # else already stored, erased or refused
                self.metrics.session_replayed_turns.inc(len(entry.turns))
            elif outcome is AppendOutcome.ERASED:
                self._erased(entry)
            self.metrics.session_spool_turns.set(self.spool.turns)
        return True

    async def run_replay(self) -> None:
        """Background task: bring the store back into use and empty the spool, with backoff.

        Supervised: an unexpected error is logged and counted
        (``gateway_session_store_errors_total{op="replay"}``) and the loop goes on after a
        pause; it never ends the task.
        """
        if self.store is None:
            return
        while True:
            try:
                await self._replay()
            except Exception:
                self.metrics.session_store_errors.labels("replay").inc()
                log.exception("session replayer: unexpected error; going on")
                await asyncio.sleep(REPLAY_BACKOFF_MAX_S * random.uniform(0.8, 1.2))

    async def _replay(self) -> None:
        store = self.store
        assert store is not None
        delay = REPLAY_BACKOFF_MIN_S
        while True:
            await self._wake.wait()
            if not self.available:
                try:
                    await store.ping(timeout_s=self.spec().redis_timeout_s)
                    _honour_cancellation()
                except StoreUnavailable as exc:
                    self.metrics.session_store_errors.labels(exc.op).inc()
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # jitter: replicas
                    delay = min(delay * 2, REPLAY_BACKOFF_MAX_S)
                    continue
                self.available = True
                log.info(
                    "session store reachable again; replaying %d pending turns", self.spool.turns
                )
            if await self.drain():
                delay = REPLAY_BACKOFF_MIN_S
                if not self.spool and self.available:
                    self._wake.clear()
            else:  # it failed again right after a ping: back off before the next one
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, REPLAY_BACKOFF_MAX_S)


def _honour_cancellation() -> None:
    """Raise CancelledError if this task was asked to stop and a library ate the request.

    redis-py (8.2) can return a call's result although the task was cancelled meanwhile
    (seen when a stopping gateway cancels the replayer mid-replay): the replayer would then
    go back to waiting and never end, and the shutdown with it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
