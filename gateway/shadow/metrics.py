"""Shadowing's metrics, in the app's registry (beside :class:`~gateway.metrics.GatewayMetrics`).

``eligible`` counts served edge answers under a policy with a ``shadow`` section; of them
``sampled`` were drawn; each sampled one then ends exactly once, as ``skipped`` (by
reason), ``stored`` or ``failed`` (by stage), or cancelled by a stopping gateway (the
difference). ``sampled / eligible`` is the sample rate as it happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.metrics import BoundCounter, BoundGauge


@dataclass(slots=True)
class ShadowMetrics:
    registry: CollectorRegistry
    eligible: Counter = field(init=False)
    sampled: Counter = field(init=False)
    skipped: Counter = field(init=False)
    stored: Counter = field(init=False)
    failed: Counter = field(init=False)
    in_flight: Gauge = field(init=False)
    tokens: Counter = field(init=False)

    def __post_init__(self) -> None:
        r = self.registry
        self.eligible = BoundCounter(
            "gateway_shadow_eligible",
            "Served edge answers that shadowing considered (policy shadow section present)",
            registry=r,
        )
        self.sampled = BoundCounter(
            "gateway_shadow_sampled",
            "Served edge answers drawn by the shadow sample",
            registry=r,
        )
        self.skipped = BoundCounter(
            "gateway_shadow_skipped",
            "Sampled answers not re-asked on the cloud, by reason (concurrency, cloud_busy, "
            "cloud_unavailable, not_text, no_store, closing, tier_not_allowed)",
            ("reason",),
            registry=r,
        )
        self.stored = BoundCounter(
            "gateway_shadow_stored",
            "Shadow records written (the request and both answers)",
            registry=r,
        )
        self.failed = BoundCounter(
            "gateway_shadow_failed",
            "Shadow calls that ended without a record, by stage (cloud: the cloud did not "
            "answer; store: the record could not be written; internal: a bug, logged)",
            ("stage",),
            registry=r,
        )
        self.in_flight = BoundGauge(
            "gateway_shadow_in_flight",
            "Shadow calls under way in this gateway process",
            registry=r,
        )
        self.tokens = BoundCounter(
            "gateway_shadow_tokens",
            "Cloud tokens spent on shadow calls, by direction (prompt or completion); not "
            "in gateway_tokens_total, which counts served answers",
            ("direction",),
            registry=r,
        )


__all__ = ["ShadowMetrics"]
