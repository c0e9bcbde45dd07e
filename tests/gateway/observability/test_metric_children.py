"""The metric families' ``labels()`` fast path behaves exactly as prometheus_client's own."""

from __future__ import annotations

import pytest

from gateway.metrics import GatewayMetrics
from tests.helpers import parse_metrics


def test_a_seen_label_set_is_the_same_child_however_it_is_named() -> None:
    metrics = GatewayMetrics()
    child = metrics.requests.labels("edge", "ok")
    child.inc()
    assert metrics.requests.labels("edge", "ok") is child
    assert metrics.requests.labels(tier="edge", outcome="ok") is child
    # Not strings: prometheus_client turns them into text, and so the same child.
    assert metrics.http_responses.labels("/v1/x", 200) is metrics.http_responses.labels(
        "/v1/x", "200"
    )
    metrics.requests.labels("edge", "ok").inc(2)
    page = parse_metrics(metrics.render().decode())
    assert page.value("gateway_requests_total", tier="edge", outcome="ok") == 3


def test_a_removed_child_is_bound_again_and_exported() -> None:
    # retain_nodes removes the gauges of a node a reload dropped; if it comes back, its
    # new value must reach /metrics, not a child no longer in the registry.
    metrics = GatewayMetrics()
    metrics.node_up.labels("edge", "edge-1").set(1)
    metrics.retain_nodes([])
    assert parse_metrics(metrics.render().decode()).samples("gateway_node_up") == []
    metrics.node_up.labels("edge", "edge-1").set(0)
    page = parse_metrics(metrics.render().decode())
    assert page.value("gateway_node_up", tier="edge", node="edge-1") == 0


def test_misuse_fails_as_prometheus_client_says() -> None:
    metrics = GatewayMetrics()
    child = metrics.requests.labels("edge", "ok")
    with pytest.raises(ValueError, match="No label names"):
        metrics.policy_info.labels("x")
    with pytest.raises(ValueError, match="Incorrect label count"):
        metrics.requests.labels("edge")
    with pytest.raises(ValueError, match="can not chain"):
        child.labels("edge", "ok")
    with pytest.raises(ValueError, match="Incorrect label names"):
        metrics.requests.labels(tier="edge", result="ok")
