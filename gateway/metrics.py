"""Prometheus metrics of one gateway app, in a registry of its own (no global state).

The labelled families answer ``labels(...)`` for a label set they have seen from one dict
look-up (about 0.1 us instead of 1.4 us: prometheus_client validates, converts and locks
on every call, and a request makes about ten such calls), and their children count and
observe without re-checking on every call what a child always satisfies.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

_M = TypeVar("_M")


class _BoundChildren:
    """``labels()`` with a fast path: the child already bound to these label values.

    It reads prometheus_client's own table of children (``_metrics``, keyed by the tuple of
    label values as strings), so :meth:`remove` and a new label set behave exactly as
    before; anything else (keyword labels, values that are not strings, a first use, a
    child, an unlabelled metric) takes prometheus_client's path, errors included. A dict
    read needs no lock under the GIL.
    """

    __slots__ = ()

    def labels(self: _M, *labelvalues: object, **labelkwargs: object) -> _M:
        try:
            child: _M = self._metrics[labelvalues]  # type: ignore[attr-defined]
        except (AttributeError, KeyError, TypeError):
            return super().labels(*labelvalues, **labelkwargs)  # type: ignore[misc, no-any-return]
        return child


class BoundCounter(_BoundChildren, Counter):
    """A :class:`~prometheus_client.Counter` whose seen label sets are one look-up away,
    and whose children count up without prometheus_client's per-call checks."""

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        # A child (its label values set) counting up without an exemplar passes every
        # check inc() makes: straight to its value. Anything else takes those checks.
        if self._labelvalues and exemplar is None and amount >= 0:
            self._value.inc(amount)
        else:
            super().inc(amount, exemplar)


class BoundGauge(_BoundChildren, Gauge):
    """A :class:`~prometheus_client.Gauge` whose seen label sets are one look-up away."""


class BoundHistogram(_BoundChildren, Histogram):
    """A :class:`~prometheus_client.Histogram` whose seen label sets are one look-up away,
    and whose children find an observation's bucket by bisection."""

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        # The first bucket whose bound is at least ``amount`` (the last bound is +Inf), as
        # prometheus_client's own loop finds it; a NaN or an exemplar takes that loop.
        if self._labelvalues and exemplar is None and amount == amount:
            self._sum.inc(amount)
            bucket = bisect.bisect_left(self._upper_bounds, amount)
            self._buckets[bucket].inc(1)
        else:
            super().observe(amount, exemplar)


@dataclass(slots=True)
class GatewayMetrics:
    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )
    requests: Counter = field(init=False)
    http_responses: Counter = field(init=False)
    route_decisions: Counter = field(init=False)
    attempts: Counter = field(init=False)
    fallbacks: Counter = field(init=False)
    node_skips: Counter = field(init=False)
    continuations: Counter = field(init=False)
    policy_reloads: Counter = field(init=False)
    policy_info: Gauge = field(init=False)
    node_up: Gauge = field(init=False)
    node_circuit: Gauge = field(init=False)
    node_in_flight: Gauge = field(init=False)
    tokens: Counter = field(init=False)
    first_token_s: Histogram = field(init=False)
    duration_s: Histogram = field(init=False)
    session_store_s: Histogram = field(init=False)
    session_store_errors: Counter = field(init=False)
    session_spooled_turns: Counter = field(init=False)
    session_replayed_turns: Counter = field(init=False)
    session_dropped_turns: Counter = field(init=False)
    session_spool_turns: Gauge = field(init=False)
    session_spool_poisoned: Counter = field(init=False)
    session_erased_appends: Counter = field(init=False)
    session_context_dropped: Counter = field(init=False)

    def __post_init__(self) -> None:
        r = self.registry
        # python_gc_*: the collector's runs per generation (see gateway/collector.py).
        GCCollector(registry=r)
        self.requests = BoundCounter(
            "gateway_requests",
            "Chat requests by the tier that answered and outcome",
            ("tier", "outcome"),
            registry=r,
        )
        self.http_responses = BoundCounter(
            "gateway_http_responses",
            "Every HTTP response by route template (`unmatched` for unknown paths) and status "
            "code, rejected requests included (gateway_requests counts routed ones only)",
            ("route", "status"),
            registry=r,
        )
        self.route_decisions = BoundCounter(
            "gateway_route_decisions",
            "Routing decisions by chosen tier and reason kind",
            ("tier", "reason"),
            registry=r,
        )
        self.attempts = BoundCounter(
            "gateway_upstream_attempts",
            "Upstream attempts by node and result",
            ("tier", "node", "result"),
            registry=r,
        )
        self.fallbacks = BoundCounter(
            "gateway_fallbacks",
            "Moves to another node or tier after a failed attempt or a skipped node",
            ("from_tier", "to_tier", "reason"),
            registry=r,
        )
        self.node_skips = BoundCounter(
            "gateway_node_skips",
            "Nodes passed over without an attempt (unhealthy, circuit_open, at_capacity), "
            "tiers without nodes (node empty, no_nodes) and tiers the API key may not use "
            "(tier_not_allowed), when no node of the tier could "
            "take the request",
            ("tier", "node", "reason"),
            registry=r,
        )
        self.continuations = BoundCounter(
            "gateway_continuations",
            "Answers that broke mid-stream and were continued on another node, by form "
            "(prefill or prompt) and result (ok, or rejected when a node refused a prefill)",
            ("from_tier", "to_tier", "form", "result"),
            registry=r,
        )
        self.policy_reloads = BoundCounter(
            "gateway_policy_reloads",
            "Policy reloads by result",
            ("result",),
            registry=r,
        )
        self.policy_info = BoundGauge(
            "gateway_policy_loaded_timestamp_seconds",
            "When the running policy was loaded",
            registry=r,
        )
        self.node_up = BoundGauge(
            "gateway_node_up",
            "1 if the node's last health check passed",
            ("tier", "node"),
            registry=r,
        )
        self.node_circuit = BoundGauge(
            "gateway_node_circuit_state",
            "0 closed, 1 half-open, 2 open",
            ("tier", "node"),
            registry=r,
        )
        self.node_in_flight = BoundGauge(
            "gateway_node_in_flight",
            "Requests in flight per node",
            ("tier", "node"),
            registry=r,
        )
        self.tokens = BoundCounter(
            "gateway_tokens",
            "Tokens by tier and direction (prompt or completion)",
            ("tier", "direction"),
            registry=r,
        )
        self.first_token_s = BoundHistogram(
            "gateway_time_to_first_token_seconds",
            "Time to the first streamed chunk per tier",
            ("tier",),
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.duration_s = BoundHistogram(
            "gateway_request_duration_seconds",
            "Whole request duration per tier",
            ("tier",),
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.session_store_s = BoundHistogram(
            "gateway_session_store_seconds",
            "Duration of successful session store calls (load, append)",
            ("op",),
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=r,
        )
        self.session_store_errors = BoundCounter(
            "gateway_session_store_errors",
            "Session store calls that failed or missed their deadline, by operation",
            ("op",),
            registry=r,
        )
        self.session_spooled_turns = BoundCounter(
            "gateway_session_spooled_turns",
            "Turns queued in the local spool instead of written to Redis",
            registry=r,
        )
        self.session_replayed_turns = BoundCounter(
            "gateway_session_replayed_turns",
            "Spooled turns written to Redis by the replayer",
            registry=r,
        )
        self.session_dropped_turns = BoundCounter(
            "gateway_session_spool_dropped_turns",
            "Turns given up: the oldest of a full spool, or turns Redis refused (WRONGTYPE)",
            registry=r,
        )
        self.session_spool_turns = BoundGauge(
            "gateway_session_spool_turns",
            "Turns waiting in the local spool",
            registry=r,
        )
        self.session_spool_poisoned = BoundCounter(
            "gateway_session_spool_poisoned",
            "Spooled appends set aside because writing them failed unexpectedly (their turns "
            "are counted in gateway_session_spool_dropped_turns too)",
            registry=r,
        )
        self.session_erased_appends = BoundCounter(
            "gateway_session_erased_appends",
            "Appends refused because their session was deleted after the request loaded it",
            registry=r,
        )
        self.session_context_dropped = BoundCounter(
            "gateway_session_context_dropped_turns",
            "Oldest turns left out to fit a tier's context window, by the answering tier",
            ("tier",),
            registry=r,
        )

    def retain_nodes(self, nodes: Iterable[tuple[str, str]]) -> None:
        """Drop the per-node gauges of nodes no longer configured: a node removed by a policy
        reload must not report its last state forever (nor keep its series alive)."""
        keep = set(nodes)
        for gauge in (self.node_up, self.node_circuit, self.node_in_flight):
            present = {
                (sample.labels["tier"], sample.labels["node"])
                for family in gauge.collect()
                for sample in family.samples
            }
            for tier, node in present - keep:
                gauge.remove(tier, node)

    def render(self) -> bytes:
        return generate_latest(self.registry)
