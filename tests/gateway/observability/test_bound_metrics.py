"""The gateway's metric classes count exactly as prometheus_client's own: the fast paths
(a child's ``labels()`` look-up, ``inc()``, ``observe()``) against the library's, value for
value in the exposition, errors included."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.metrics import BoundCounter, BoundHistogram

BUCKETS = (0.005, 0.1, 1, 10)


Made = tuple[Any, CollectorRegistry]


def _pair(ours: type, theirs: type, **options: object) -> tuple[Made, Made]:
    """The same metric in two registries: the gateway's class and prometheus_client's."""
    made: list[Made] = []
    for cls in (ours, theirs):
        registry = CollectorRegistry()
        made.append((cls("m", "help", ("tier",), registry=registry, **options), registry))
    return made[0], made[1]


def _exposition(registry: CollectorRegistry) -> list[str]:
    # Without the _created lines: they hold the time each child was made.
    return [
        line for line in generate_latest(registry).decode().splitlines() if "_created" not in line
    ]


def test_counters_count_as_prometheus_client_does() -> None:
    (ours, ours_registry), (theirs, theirs_registry) = _pair(BoundCounter, Counter)
    for metric in (ours, theirs):
        for tier, amount in [("edge", 1), ("edge", 2.5), ("cloud", 0), ("edge", 7)]:
            metric.labels(tier).inc(amount)
        metric.labels(tier="cloud").inc()
    assert _exposition(ours_registry) == _exposition(theirs_registry)
    assert 'm_total{tier="edge"} 10.5' in _exposition(ours_registry)


def test_histograms_bucket_as_prometheus_client_does() -> None:
    (ours, ours_registry), (theirs, theirs_registry) = _pair(
        BoundHistogram, Histogram, buckets=BUCKETS
    )
    # On each bound, either side of it, below all and above all.
    amounts = [-1.0, 0.0, 0.005, 0.0051, 0.1, 0.5, 1, 1.0000001, 10, 11, 1e9, math.inf]
    for metric in (ours, theirs):
        for amount in amounts:
            metric.labels("edge").observe(amount)
    assert _exposition(ours_registry) == _exposition(theirs_registry)


def test_what_the_fast_paths_do_not_take_still_behaves_as_the_library() -> None:
    (ours, _), (theirs, _) = _pair(BoundCounter, Counter)
    for metric in (ours, theirs):
        with pytest.raises(ValueError, match="non-negative"):
            metric.labels("edge").inc(-1)
        with pytest.raises(ValueError, match="missing label values"):
            metric.inc()
    (ours_h, ours_registry), (theirs_h, theirs_registry) = _pair(
        BoundHistogram, Histogram, buckets=BUCKETS
    )
    for metric in (ours_h, theirs_h):
        metric.labels("edge").observe(math.nan)
        metric.labels("edge").observe(0.5, {"trace_id": "abc"})
        with pytest.raises(ValueError, match="missing label values"):
            metric.observe(1.0)
    assert _exposition(ours_registry) == _exposition(theirs_registry)
