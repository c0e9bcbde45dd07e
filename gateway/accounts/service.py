"""Accounting of chat requests: admission of keys with limits, settlement of every answer.

The chat handler calls :meth:`Accounting.admit` once its routing decision is made (only
for a key that is :attr:`~gateway.accounts.model.ApiKey.limited`) and
:meth:`Accounting.settle` exactly once whatever happens next (answered, failed after some
attempts, client gone). Runs when the gateway keeps keys in Redis
(``GATEWAY_KEY_STORE=redis``); then traffic without a stored key is settled too, under
``_static`` (a GATEWAY_API_KEYS key) or ``_anonymous``. Otherwise :meth:`Accounting.off`
stands in and :attr:`~Accounting.enabled` is False.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Final

from gateway.accounts.charges import answer_charges
from gateway.accounts.layout import ANONYMOUS_ID, STATIC_ID
from gateway.accounts.ledger import Ledger
from gateway.accounts.limiter import Admission, Limiter
from gateway.accounts.metrics import AccountMetrics
from gateway.accounts.model import ApiKey
from gateway.accounts.pricing import ceiling_prices, reserve_at
from gateway.accounts.redis_pipe import RedisPipe
from gateway.policy.answer_budget import default_max_tokens
from gateway.policy.model import Policy
from gateway.policy.pricing import Price, unserved_models
from gateway.redis_client import Client, close_client, redis_client
from gateway.upstream.answer_record import AnswerRecord
from hybrid_common.protocol import ChatMessage, Tier

log = logging.getLogger("gateway.accounts")

REDIS_TIMEOUT_S: Final = 0.25
"""Every Redis call of limits and the ledger (admission waits at most this long)."""
MAX_CONNECTIONS: Final = 64


class Accounting:
    """Limits, budgets and the usage ledger of one gateway process."""

    def __init__(self, limiter: Limiter | None, ledger: Ledger | None) -> None:
        self._limiter = limiter
        self._ledger = ledger
        self._policy: Policy | None = None
        self._client: Client | None = None
        """Closed by :meth:`aclose` when :meth:`connect` made it."""
        self._pipe: RedisPipe | None = None
        """The limiter's (one server only), closed by :meth:`aclose` like ``_client``."""
        self._ceilings: dict[Tier, Price] = {}

    @classmethod
    def over(
        cls, client: Client, metrics: AccountMetrics, *, pipe: RedisPipe | None = None
    ) -> Accounting:
        """Accounting on ``client`` and, for admissions, ``pipe`` if given (both of which
        the caller closes)."""
        limiter = Limiter(client, metrics=metrics, pipe=pipe)
        return cls(limiter, Ledger(client, metrics=metrics))

    @classmethod
    def connect(cls, url: str, *, cluster: bool, metrics: AccountMetrics) -> Accounting:
        """Accounting on a Redis client of its own (connected lazily, closed by
        :meth:`aclose`), every call bounded by :data:`REDIS_TIMEOUT_S`. On one server,
        admissions take a :class:`RedisPipe` of their own (the hot call, at a fraction of
        redis-py's CPU); a Redis Cluster's keys live on many nodes: redis-py routes them."""
        client = redis_client(
            url, cluster=cluster, max_connections=MAX_CONNECTIONS, timeout_s=REDIS_TIMEOUT_S
        )
        pipe = None if cluster else RedisPipe.from_url(url, timeout_s=REDIS_TIMEOUT_S)
        accounting = cls.over(client, metrics, pipe=pipe)
        accounting._client, accounting._pipe = client, pipe
        return accounting

    @classmethod
    def off(cls) -> Accounting:
        """Accounting that does nothing (no key store)."""
        return cls(None, None)

    @property
    def enabled(self) -> bool:
        return self._ledger is not None

    def start(self) -> None:
        if self._ledger is not None:
            self._ledger.start()

    async def aclose(self) -> None:
        """Write what the ledger holds (for a moment at most), then disconnect."""
        if self._ledger is not None:
            await self._ledger.aclose()
        if self._pipe is not None:
            await self._pipe.aclose()
            self._pipe = None
        if self._client is not None:
            await close_client(self._client)
            self._client = None

    async def admit(
        self, key: ApiKey, policy: Policy, *, prompt_tokens: int, max_tokens: int | None
    ) -> Admission | None:
        """Admit one request of ``key`` (None: it has no limits to check); raises
        RateLimited, BudgetExceeded or LimitsUnavailable.

        ``prompt_tokens`` is the routing's count of the request; ``max_tokens`` the
        client's answer budget (None: the largest default of the tiers the key may use).
        The budget reservation prices both at the priciest of those tiers.
        """
        if self._limiter is None or not key.limited:
            return None
        estimate_nusd = 0
        if key.budget is not None:
            tiers: Collection[Tier] = key.tiers
            budget = max_tokens or max(
                (default_max_tokens(policy, tier) for tier in tiers), default=0
            )
            estimate_nusd = reserve_at(self._ceilings_of(policy), tiers, prompt_tokens, budget)
        return await self._limiter.admit(
            key,
            estimate_tokens=prompt_tokens,
            estimate_nusd=estimate_nusd,
            on_store_error=policy.limits.on_store_error,
        )

    def settle(
        self,
        admission: Admission | None,
        key: ApiKey | None,
        *,
        static: bool,
        record: AnswerRecord,
        policy: Policy,
        messages: list[ChatMessage],
    ) -> None:
        """Settle one request (call exactly once): the charges of its answer, and the
        release of what ``admission`` reserved. ``key``: the stored key it came with;
        ``static``: it came with a GATEWAY_API_KEYS key instead."""
        if self._ledger is None:
            return
        if key is not None:
            key_id, name = key.id, key.name
        else:
            key_id = name = STATIC_ID if static else ANONYMOUS_ID
        try:
            self._ceilings_of(policy)  # notes priced models no node serves, once per policy
            charges = answer_charges(record, policy, messages)
            self._ledger.settle(admission, key_id, name, charges)
        except Exception:
            # Called as a request ends, answered or not: a bug here must not turn a served
            # answer into a 500. Logged with its traceback.
            log.exception("settling a request of key %s failed", key_id)

    def _ceilings_of(self, policy: Policy) -> dict[Tier, Price]:
        """Each tier's highest prices under ``policy``, worked out once per policy."""
        if policy is not self._policy:
            served = policy.served_models()
            self._ceilings = ceiling_prices(policy.pricing, served)
            self._policy = policy
            unserved = unserved_models(policy.pricing, served)
            if unserved:
                log.warning(
                    "pricing.models names models no node serves (never charged): %s",
                    ", ".join(unserved),
                )
        return self._ceilings


__all__ = ["MAX_CONNECTIONS", "REDIS_TIMEOUT_S", "Accounting"]
