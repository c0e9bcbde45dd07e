"""Settling answers: real usage into the TPM windows, the budgets and the usage ledger.

:meth:`Ledger.settle` is synchronous and cheap: it adds an answer's charges to an
in-memory batch, coalesced per key (and per day, tier and model for the ledger, per
budget period for budgets), and returns. A background flusher writes the batch every
:data:`FLUSH_INTERVAL_S` in one pipeline: one ``settle.lua`` per key (TPM window += its
tokens, budget ``spent`` += cost and ``reserved`` -= its reservations, usage hash
counters) and a ``SADD`` per day to the day's set of key ids.

**Nothing is lost while Redis is away, and nothing is counted twice.** A batch whose write
failed stays *in doubt* and is written again, alone and unchanged, until it succeeds;
meanwhile new charges coalesce into the next batch, so memory is bounded by the number of
(key, day, tier, model) entries, not by the number of requests. Each gateway process
numbers its batches; the script records the last number applied per key
(``gw:ledger:{<id>}:<writer>``), so a batch that was applied but whose reply was lost is a
no-op the second time. Every failure is counted (``gateway_limits_store_errors_total``)
and logged once per outage. :meth:`aclose` writes what it can before the process ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from redis.exceptions import NoScriptError, RedisError, ResponseError

from gateway.accounts.layout import (
    USAGE_COUNTERS,
    Calendar,
    rate_prefix,
    usage_field,
    usage_ids_key,
    usage_key,
    writer_key,
)
from gateway.accounts.limiter import Admission, lua_script
from gateway.accounts.metrics import AccountMetrics
from gateway.accounts.pricing import nusd_to_usd
from gateway.redis_client import Client
from hybrid_common.protocol import Tier

log = logging.getLogger("gateway.accounts")

FLUSH_INTERVAL_S: Final = 0.05
MAX_BACKOFF_S: Final = 5.0
CLOSE_TIMEOUT_S: Final = 2.0
"""How long :meth:`Ledger.aclose` keeps trying to write what is queued."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Charge:
    """What one attempt of an answer spent, on one tier and model."""

    tier: Tier
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_nusd: int
    cloud_nusd: int
    """What the same tokens would have cost at the cloud tier's price."""
    requests: int = 0
    """1 on the charge of the attempt that ended the answer: a request counts once."""


@dataclass(slots=True)
class _KeyBatch:
    """One key's share of a batch, coalesced."""

    tokens: int = 0
    budgets: dict[str, list[int]] = field(default_factory=dict)
    """Budget hash -> [spent, release, expires_at]."""
    usage: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)
    """(day, tier, model) -> the :data:`~gateway.accounts.layout.USAGE_COUNTERS`, in order."""

    def script_call(self, key_id: str, writer: str, seq: int) -> tuple[int, list[str | int]]:
        """``settle.lua``'s key count, and its keys and arguments, for this key."""
        keys: list[str | int] = [writer_key(key_id, writer), rate_prefix(key_id)]
        args: list[str | int] = [seq, self.tokens, len(self.budgets), 0]
        for name, (spent, release, expires_at) in self.budgets.items():
            keys.append(name)
            args += [spent, release, expires_at]
        by_day: dict[str, list[str | int]] = {}
        for (day, tier, model), counters in self.usage.items():
            pairs = by_day.setdefault(day, [])
            for counter, value in zip(USAGE_COUNTERS, counters, strict=True):
                if value:
                    pairs += [usage_field(tier, model, counter), value]
        args[3] = len(by_day)
        for day, pairs in by_day.items():
            keys.append(usage_key(key_id, day))
            args += [len(pairs) // 2, *pairs]
        return len(keys), [*keys, *args]


@dataclass(slots=True)
class _Batch:
    seq: int
    keys: dict[str, _KeyBatch]
    entries: int


class Ledger:
    """Queues settlements and writes them in the background (see the module doc)."""

    def __init__(
        self,
        client: Client,
        *,
        metrics: AccountMetrics,
        calendar: Calendar | None = None,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        self._client = client
        self._text = lua_script("settle.lua")
        self._sha = client.register_script(self._text).sha
        self._metrics = metrics
        self._calendar = calendar or Calendar()
        self._interval_s = flush_interval_s
        self._max_backoff_s = max_backoff_s
        self._writer = secrets.token_hex(8)
        """This process's name in the batch markers."""
        self._seq = 0
        self._pending: dict[str, _KeyBatch] = {}
        self._pending_entries = 0
        self._in_doubt: _Batch | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._down = False

    @property
    def queued(self) -> int:
        """Entries waiting to be written (coalesced), the batch in doubt included."""
        return self._pending_entries + (self._in_doubt.entries if self._in_doubt else 0)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gateway-ledger")

    def settle(
        self,
        admission: Admission | None,
        key_id: str,
        key_name: str,
        charges: Sequence[Charge],
    ) -> None:
        """Queue one request's settlement: its charges, and the release of what its
        admission reserved. Call it exactly once per request (admitted or not limited)."""
        batch = self._pending.get(key_id)
        if batch is None:
            batch = self._pending[key_id] = _KeyBatch()
        entries = self._pending_entries
        if admission is not None:
            if admission.budget_key is not None:
                entry = batch.budgets.get(admission.budget_key)
                if entry is None:
                    entry = batch.budgets[admission.budget_key] = [0, 0, 0]
                    self._pending_entries += 1
                entry[0] += sum(charge.cost_nusd for charge in charges)
                entry[1] += admission.reserved_nusd
                entry[2] = max(entry[2], admission.budget_expires_at)
            if admission.counts_tokens:
                batch.tokens += sum(c.prompt_tokens + c.completion_tokens for c in charges)
        if charges:
            day = self._calendar.day()
            metrics = self._metrics
            for charge in charges:
                slot = (day, charge.tier, charge.model)
                counters = batch.usage.get(slot)
                if counters is None:
                    counters = batch.usage[slot] = [0, 0, 0, 0, 0]
                    self._pending_entries += 1
                counters[0] += charge.requests
                counters[1] += charge.prompt_tokens
                counters[2] += charge.completion_tokens
                counters[3] += charge.cost_nusd
                counters[4] += charge.cloud_nusd
                labels = (key_name, charge.tier, charge.model)
                if charge.requests:
                    metrics.requests.labels(*labels).inc(charge.requests)
                metrics.tokens.labels(*labels, "prompt").inc(charge.prompt_tokens)
                metrics.tokens.labels(*labels, "completion").inc(charge.completion_tokens)
                metrics.cost_usd.labels(*labels).inc(nusd_to_usd(charge.cost_nusd))
                metrics.cloud_equivalent_usd.labels(*labels).inc(nusd_to_usd(charge.cloud_nusd))
        if self._pending_entries != entries:
            self._metrics.ledger_queue.set(self.queued)
        self._wake.set()

    async def flush(self) -> bool:
        """Write the batch in doubt, else what is pending; True when nothing failed."""
        if self._in_doubt is None:
            if not self._pending:
                return True
            self._seq += 1
            self._in_doubt = _Batch(self._seq, self._pending, self._pending_entries)
            self._pending, self._pending_entries = {}, 0
        batch = self._in_doubt
        try:
            await self._write(batch)
        except (RedisError, OSError) as exc:
            self._metrics.store_errors.labels("settle").inc()
            if not self._down:
                self._down = True
                log.warning(
                    "usage ledger: writing to Redis failed (%s: %s); %d entries kept and "
                    "retried until it is back",
                    type(exc).__name__,
                    exc,
                    self.queued,
                )
            return False
        self._in_doubt = None
        if self._down:
            self._down = False
            log.info("usage ledger: Redis is back; queued usage written")
        self._metrics.ledger_queue.set(self.queued)
        return True

    async def aclose(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Stop the flusher and write what is queued (trying for up to ``timeout_s``)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delay = self._interval_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._in_doubt is not None or self._pending:
                    if not await self.flush():
                        await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
                        delay = min(delay * 2, self._max_backoff_s)
        if self.queued:
            log.error(
                "usage ledger: %d entries could not be written before shutdown and are lost",
                self.queued,
            )

    async def _run(self) -> None:
        delay = self._interval_s
        failures = 0
        while True:
            await self._wake.wait()
            await asyncio.sleep(delay)  # a batch gathers what settles meanwhile
            self._wake.clear()
            try:
                written = await self.flush()
            except Exception:
                # The flusher's outermost boundary: a bug must not end it (the queue would
                # grow unwritten until shutdown). Logged; the batch stays in doubt.
                log.exception("usage ledger: writing a batch failed")
                written = False
            if written:
                failures, delay = 0, self._interval_s
                if self._pending:
                    self._wake.set()
            else:
                failures += 1
                delay = min(self._interval_s * 2**failures, self._max_backoff_s)
                self._wake.set()

    async def _write(self, batch: _Batch) -> None:
        """Write ``batch``; keys written (or refused for good) leave it. Raises RedisError
        or OSError when Redis cannot be reached: what is left stays in doubt."""
        for _ in range(2):
            key_ids = list(batch.keys)
            days: dict[str, list[str]] = {}
            async with self._client.pipeline(transaction=False) as pipe:
                for key_id in key_ids:
                    key_batch = batch.keys[key_id]
                    count, keys_and_args = key_batch.script_call(key_id, self._writer, batch.seq)
                    pipe.evalsha(self._sha, count, *keys_and_args)
                    for day in {slot[0] for slot in key_batch.usage}:
                        days.setdefault(day, []).append(key_id)
                for day, ids in days.items():
                    pipe.sadd(usage_ids_key(day), *ids)
                results = await pipe.execute(raise_on_error=False)
            missing_script = False
            for key_id, result in zip(key_ids, results, strict=False):
                if isinstance(result, NoScriptError):
                    missing_script = True  # Redis restarted, or a cluster pipeline
                    continue
                if isinstance(result, ResponseError):
                    # Redis refused it (say WRONGTYPE: something else owns a key): the same
                    # write would fail for ever, and must not hold back everyone else's.
                    self._metrics.store_errors.labels("settle_refused").inc()
                    log.error("usage ledger: Redis refused key %s's usage: %s", key_id, result)
                del batch.keys[key_id]
            for result in results[len(key_ids) :]:
                if isinstance(result, ResponseError):
                    log.error("usage ledger: Redis refused a day's key ids: %s", result)
            if not missing_script:
                return
            self._sha = await self._client.script_load(self._text)
        raise RedisError("usage ledger: the settle script could not be loaded")


__all__ = ["CLOSE_TIMEOUT_S", "FLUSH_INTERVAL_S", "Charge", "Ledger"]
