"""Metrics of keys, limits, budgets and cost, in the app's registry (beside
:class:`~gateway.metrics.GatewayMetrics`).

Per key they are labelled by the key's *name* (``key_name``), never by the key: traffic
with a GATEWAY_API_KEYS key counts as ``_static``, traffic without any as ``_anonymous``.
Tokens and cost are counted where they were spent (an answer continued on the other tier
counts under both); a request counts once, under the tier and model that ended it.
``cost_usd`` against ``cloud_equivalent_usd`` is what routing saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.metrics import BoundCounter, BoundGauge


@dataclass(slots=True)
class AccountMetrics:
    registry: CollectorRegistry
    requests: Counter = field(init=False)
    tokens: Counter = field(init=False)
    cost_usd: Counter = field(init=False)
    cloud_equivalent_usd: Counter = field(init=False)
    rejections: Counter = field(init=False)
    budget_warnings: Counter = field(init=False)
    unchecked: Counter = field(init=False)
    store_errors: Counter = field(init=False)
    ledger_queue: Gauge = field(init=False)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = BoundCounter(
            "gateway_key_requests",
            "Settled chat requests by key name and the tier and model that ended the answer",
            ("key_name", "tier", "model"),
            registry=r,
        )
        self.tokens = BoundCounter(
            "gateway_key_tokens",
            "Tokens spent per key name, tier and model, by kind (prompt or completion); "
            "failed and continued attempts included",
            ("key_name", "tier", "model", "kind"),
            registry=r,
        )
        self.cost_usd = BoundCounter(
            "gateway_key_cost_usd",
            "What the tokens cost at the policy's prices (USD), per key name, tier and model",
            ("key_name", "tier", "model"),
            registry=r,
        )
        self.cloud_equivalent_usd = BoundCounter(
            "gateway_key_cloud_equivalent_usd",
            "What the same tokens would have cost at the cloud tier's price (USD); less "
            "gateway_key_cost_usd, what routing saved",
            ("key_name", "tier", "model"),
            registry=r,
        )
        self.rejections = BoundCounter(
            "gateway_limiter_rejections",
            "Requests refused by a key's limits, by reason (requests, tokens, budget)",
            ("key_name", "reason"),
            registry=r,
        )
        self.budget_warnings = BoundCounter(
            "gateway_budget_warnings",
            "Requests admitted past their key's soft budget limit (answered with "
            "x-gateway-budget-warning)",
            ("key_name",),
            registry=r,
        )
        self.unchecked = BoundCounter(
            "gateway_limiter_unchecked",
            "Requests admitted without a limit check: Redis unavailable and "
            "limits.on_store_error open",
            registry=r,
        )
        self.store_errors = BoundCounter(
            "gateway_limits_store_errors",
            "Failed Redis calls of limits and the usage ledger, by operation (admit, settle; "
            "settle_refused: a key's usage Redis refused for good, logged)",
            ("operation",),
            registry=r,
        )
        self.ledger_queue = BoundGauge(
            "gateway_ledger_queue",
            "Usage entries waiting to be written to Redis (coalesced per key, day, tier and "
            "model; grows while Redis is unavailable)",
            registry=r,
        )


__all__ = ["AccountMetrics"]
