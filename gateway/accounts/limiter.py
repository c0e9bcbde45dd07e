"""Per-key requests and tokens per minute and budgets, enforced across every replica.

One request of a key with limits costs one Redis round trip: ``admit.lua`` (next to this
module; loaded once, run by EVALSHA, loaded again on NOSCRIPT; on one server through
:class:`~gateway.accounts.redis_pipe.RedisPipe`, a fraction of redis-py's CPU per call, on
a Redis Cluster through redis-py's cluster client) checks, in one atomic step:

- **requests per minute** over a sliding window (this minute's count and the previous
  minute's, weighted by the share of it still inside the last 60 s; Redis's own clock);
- **tokens per minute** against the tokens already settled in the window (real usage,
  written by :mod:`gateway.accounts.ledger`), plus this request's prompt;
- **the budget** of the current period: admitted while ``spent + reserved < limit``, and
  this request's estimate is then reserved, so concurrent requests can overspend by at
  most one request's worth. Settlement releases the reservation and adds the real cost.

Refusals are :class:`~gateway.errors.RateLimited` (with ``Retry-After`` and OpenAI's
``x-ratelimit-*`` headers) and :class:`~gateway.errors.BudgetExceeded` (saying when the
period resets). While Redis cannot be reached, the policy's ``limits.on_store_error``
decides: ``open`` admits unchecked (counted, logged once per outage), ``closed`` answers
:class:`~gateway.errors.LimitsUnavailable`. After a failure Redis is left alone for
:data:`STORE_RETRY_S`, so an outage costs each request nothing but the decision.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Final, Literal, cast

from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.accounts.layout import BUDGET_GRACE_S, Calendar, budget_key, rate_prefix
from gateway.accounts.metrics import AccountMetrics
from gateway.accounts.model import ApiKey
from gateway.accounts.pricing import nusd_to_usd, usd_to_nusd
from gateway.accounts.redis_pipe import Arg, RedisPipe, script_sha
from gateway.errors import BudgetExceeded, LimitsUnavailable, RateLimited
from gateway.policy.pricing import StoreErrorMode
from gateway.redis_client import Client

log = logging.getLogger("gateway.accounts")

STORE_RETRY_S: Final = 1.0
"""After a failed call, admissions skip Redis this long (fail open or closed at once)."""
BUDGET_WARNING_HEADER: Final = "x-gateway-budget-warning"

_ADMITTED, _REQUESTS, _TOKENS, _BUDGET = 0, 1, 2, 3


@functools.cache
def lua_script(name: str) -> str:
    """A Lua script shipped next to this module (read once per process)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    """A request let through: what settling it needs, and what its answer tells the client."""

    key_id: str
    budget_key: str | None = None
    """The budget period hash its reservation is in (None: the key has no budget)."""
    budget_expires_at: int = 0
    reserved_nusd: int = 0
    """Released exactly once, when the request is settled (0: nothing was reserved)."""
    counts_tokens: bool = False
    """The key has a tokens-per-minute limit: settled tokens go into its window."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """``x-ratelimit-*`` and, past the soft limit, the budget warning."""
    warning: bool = False
    checked: bool = True
    """False: admitted without a check (Redis unavailable, ``on_store_error: open``)."""


class Limiter:
    """Admits requests of keys with limits; one Redis call each (see the module doc)."""

    def __init__(
        self,
        client: Client,
        *,
        metrics: AccountMetrics,
        pipe: RedisPipe | None = None,
        calendar: Calendar | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        text = lua_script("admit.lua")
        self._pipe = pipe
        """Admissions go through it when given (one server; ``client`` is then unused)."""
        self._text, self._sha = text, script_sha(text)
        self._script: AsyncScript = client.register_script(text)
        self._metrics = metrics
        self._calendar = calendar or Calendar(clock)
        self._clock = clock
        self._monotonic = monotonic
        self._down_until = 0.0
        self._down = False

    async def admit(
        self,
        key: ApiKey,
        *,
        estimate_tokens: int,
        estimate_nusd: int,
        on_store_error: StoreErrorMode,
    ) -> Admission:
        """Admit one request of ``key`` or raise RateLimited, BudgetExceeded or (Redis
        unavailable, failing closed) LimitsUnavailable."""
        budget = key.budget
        span = self._calendar.period(budget.period) if budget is not None else None
        hash_key = budget_key(key.id, span.id) if span is not None else None
        expires_at = span.ends_at + BUDGET_GRACE_S if span is not None else 0
        if self._monotonic() < self._down_until:
            return self._unchecked(key, hash_key, expires_at, on_store_error)
        limit_nusd = usd_to_nusd(budget.limit_usd) if budget is not None else -1
        keys = [rate_prefix(key.id), hash_key or rate_prefix(key.id)]
        args: list[Arg] = [
            key.rpm if key.rpm is not None else -1,
            key.tpm if key.tpm is not None else -1,
            max(0, estimate_tokens),
            limit_nusd,
            max(0, estimate_nusd) if budget is not None else 0,
            expires_at,
        ]
        try:
            if self._pipe is not None:
                reply = cast(list[int], await self._pipe.evalsha(self._sha, self._text, keys, args))
            else:
                reply = await self._script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return self._unchecked(key, hash_key, expires_at, on_store_error)
        if self._down:
            self._down = False
            log.info("limits store reachable again: limits and budgets are checked")
        status, retry_ms, req_left, req_reset_ms, tok_left, tok_reset_ms, spent, reserved = (
            int(value) for value in reply
        )
        headers = _limit_headers(key, req_left, req_reset_ms, tok_left, tok_reset_ms)
        if status == _ADMITTED:
            warning = _soft_warning(key, spent, span.ends_at if span else 0)
            if warning is not None:
                headers[BUDGET_WARNING_HEADER] = warning
                self._metrics.budget_warnings.labels(key.name).inc()
            return Admission(
                key_id=key.id,
                budget_key=hash_key,
                budget_expires_at=expires_at,
                reserved_nusd=estimate_nusd if hash_key is not None and estimate_nusd > 0 else 0,
                counts_tokens=key.tpm is not None,
                headers=headers,
                warning=warning is not None,
            )
        if status == _BUDGET:
            assert budget is not None and span is not None
            self._metrics.rejections.labels(key.name, "budget").inc()
            raise BudgetExceeded(
                f"This key's {_PERIOD_WORDS[budget.period]} budget of "
                f"{budget.limit_usd:.2f} USD is used up ({nusd_to_usd(spent):.4f} USD spent, "
                f"{nusd_to_usd(reserved):.4f} USD reserved by requests under way). It "
                f"resets at {_utc(span.ends_at)}.",
                retry_after_s=max(1, math.ceil(span.ends_at - self._clock())),
                limit_headers=headers,
            )
        limit: Literal["requests", "tokens"] = "requests" if status == _REQUESTS else "tokens"
        self._metrics.rejections.labels(key.name, limit).inc()
        retry_s = max(1, math.ceil(retry_ms / 1000))
        if limit == "requests":
            message = f"Rate limit reached on requests per minute (RPM): limit {key.rpm}."
        else:
            message = (
                f"Rate limit reached on tokens per minute (TPM): limit {key.tpm}, "
                f"remaining {tok_left}, requested about {estimate_tokens}."
            )
        raise RateLimited(
            f"{message} Please try again in {retry_s}s.",
            limit=limit,
            retry_after_s=retry_s,
            limit_headers=headers,
        )

    def _unchecked(
        self, key: ApiKey, hash_key: str | None, expires_at: int, mode: StoreErrorMode
    ) -> Admission:
        if mode == "closed":
            raise LimitsUnavailable(
                "This key's limits and budget cannot be checked right now (their store is "
                "unavailable); please retry shortly.",
                retry_after_s=max(1, math.ceil(STORE_RETRY_S)),
            )
        self._metrics.unchecked.inc()
        # Nothing reserved; the cost is still settled into the budget once Redis is back.
        return Admission(
            key_id=key.id,
            budget_key=hash_key,
            budget_expires_at=expires_at,
            counts_tokens=key.tpm is not None,
            checked=False,
        )

    def _failed(self, exc: BaseException) -> None:
        self._metrics.store_errors.labels("admit").inc()
        self._down_until = self._monotonic() + STORE_RETRY_S
        if not self._down:
            self._down = True
            log.warning(
                "limits store unavailable (%s: %s): requests of keys with limits are %s "
                "until it is back",
                type(exc).__name__,
                exc,
                "admitted unchecked or refused, as the policy's limits.on_store_error says",
            )


_PERIOD_WORDS: Final = {"day": "daily", "month": "monthly"}


def _limit_headers(
    key: ApiKey, req_left: int, req_reset_ms: int, tok_left: int, tok_reset_ms: int
) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for the limits the key has."""
    headers: dict[str, str] = {}
    if key.rpm is not None:
        headers["x-ratelimit-limit-requests"] = str(key.rpm)
        headers["x-ratelimit-remaining-requests"] = str(req_left)
        headers["x-ratelimit-reset-requests"] = duration(req_reset_ms)
    if key.tpm is not None:
        headers["x-ratelimit-limit-tokens"] = str(key.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(tok_left)
        headers["x-ratelimit-reset-tokens"] = duration(tok_reset_ms)
    return headers


def _soft_warning(key: ApiKey, spent_nusd: int, ends_at: int) -> str | None:
    budget = key.budget
    if budget is None or budget.soft_limit_usd is None:
        return None
    if spent_nusd < usd_to_nusd(budget.soft_limit_usd):
        return None
    return (
        f"soft-limit; spent_usd={nusd_to_usd(spent_nusd):.4f}; "
        f"soft_limit_usd={budget.soft_limit_usd:.2f}; limit_usd={budget.limit_usd:.2f}; "
        f"resets={_utc(ends_at)}"
    )


def duration(ms: int) -> str:
    """A span as OpenAI writes it in ``x-ratelimit-reset-*``: ``250ms``, ``12.5s``, ``1m5s``."""
    if ms < 1000:
        return f"{max(0, ms)}ms"
    minutes, rest_ms = divmod(ms, 60_000)
    seconds = f"{rest_ms / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def _utc(unix_s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


__all__ = [
    "BUDGET_WARNING_HEADER",
    "STORE_RETRY_S",
    "Admission",
    "Limiter",
    "duration",
    "lua_script",
]
