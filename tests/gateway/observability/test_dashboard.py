"""docs/grafana-dashboard.json: valid JSON whose every query names a metric the gateway has."""

from __future__ import annotations

import json
import re
from pathlib import Path

from gateway.accounts.metrics import AccountMetrics
from gateway.metrics import GatewayMetrics

DASHBOARD = Path(__file__).resolve().parents[3] / "docs" / "grafana-dashboard.json"
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}
METRIC = re.compile(r"\b(gateway_[a-z0-9_]+)\b")


def exposed_sample_names() -> set[str]:
    """Every sample name the gateway's registry can expose."""
    names: set[str] = set()
    registry = GatewayMetrics().registry
    AccountMetrics(registry)  # in the app's registry too (gateway.app)
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def test_every_queried_metric_exists() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exposed = exposed_sample_names()
    queried: set[str] = set()
    for panel in dashboard["panels"]:
        if panel["type"] == "row":  # a heading over the panels below it
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            found = METRIC.findall(target["expr"])
            assert found, target["expr"]
            queried.update(found)
    assert queried - exposed == set()
    # The families an operator needs are all on the board.
    for needed in (
        "gateway_requests_total",
        "gateway_route_decisions_total",
        "gateway_fallbacks_total",
        "gateway_time_to_first_token_seconds_bucket",
        "gateway_request_duration_seconds_bucket",
        "gateway_tokens_total",
        "gateway_node_up",
        "gateway_node_circuit_state",
        "gateway_session_store_errors_total",
        "gateway_session_spool_turns",
        "gateway_policy_reloads_total",
        "gateway_key_cost_usd_total",
        "gateway_key_cloud_equivalent_usd_total",
        "gateway_key_tokens_total",
    ):
        assert needed in queried, needed


def test_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["datasource"]["uid"] == "${datasource}"
    (variable,) = dashboard["templating"]["list"]
    assert variable == {**variable, "name": "datasource", "type": "datasource"}
