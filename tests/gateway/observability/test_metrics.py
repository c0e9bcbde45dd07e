"""GET /metrics: the families an operator's dashboard needs, with bounded labels."""

from __future__ import annotations

import aiohttp
import pytest

from tests.gateway.observability.conftest import SIMPLE
from tests.helpers import Metrics, eventually_value, policy_yaml, scrape_metrics, sdk
from tests.scripted import unused_port


async def test_routed_request_and_fallback_show_in_the_families(upstreams, make_gateway) -> None:
    edge, cloud = await upstreams("edge-model"), await upstreams("cloud-model")
    dead = f"http://127.0.0.1:{unused_port()}"
    gateway = await make_gateway(
        policy_yaml([(edge.url, "edge-model")], [(cloud.url, "cloud-model")]), health_checks=False
    )
    fallback_gateway = await make_gateway(
        policy_yaml([(dead, "edge-model")], [(cloud.url, "cloud-model")]), health_checks=False
    )
    for target in (gateway, fallback_gateway):
        async with sdk(target) as client:
            await client.chat.completions.create(model="auto", messages=SIMPLE)
            stream = await client.chat.completions.create(
                model="auto", messages=SIMPLE, stream=True
            )
            [c async for c in stream]

    routed = await scrape_metrics(gateway)
    assert routed.value("gateway_requests_total", tier="edge", outcome="ok") == 2
    assert routed.value("gateway_route_decisions_total", tier="edge", reason="score") == 2
    assert routed.value("gateway_tokens_total", tier="edge", direction="prompt") == 10
    assert routed.value("gateway_tokens_total", tier="edge", direction="completion") == 10
    assert routed.value("gateway_time_to_first_token_seconds_count", tier="edge") == 1
    assert routed.value("gateway_request_duration_seconds_count", tier="edge") == 2
    assert (
        routed.value("gateway_upstream_attempts_total", tier="edge", node="edge-1", result="ok")
        == 2
    )
    assert (
        routed.value("gateway_http_responses_total", route="/v1/chat/completions", status="200")
        == 2
    )
    assert routed.value("gateway_node_up", tier="edge", node="edge-1") == 0  # not checked yet
    assert routed.value("gateway_node_circuit_state", tier="cloud", node="cloud-1") == 0
    assert routed.families["gateway_fallbacks"] == []  # a family with no moves yet

    moved = await scrape_metrics(fallback_gateway)
    assert moved.value("gateway_requests_total", tier="cloud", outcome="ok") == 2
    assert moved.value("gateway_route_decisions_total", tier="edge", reason="score") == 2
    assert (
        moved.value(
            "gateway_fallbacks_total",
            from_tier="edge",
            to_tier="cloud",
            reason="connect_error",
        )
        == 2
    )
    assert (
        moved.value(
            "gateway_upstream_attempts_total",
            tier="edge",
            node="edge-1",
            result="connect_error",
        )
        == 2
    )
    assert moved.value("gateway_time_to_first_token_seconds_count", tier="cloud") == 1
    # The metrics the dashboard and the docs name, with their label names.
    expected = {
        "gateway_requests": {"tier", "outcome"},
        "gateway_http_responses": {"route", "status"},
        "gateway_route_decisions": {"tier", "reason"},
        "gateway_fallbacks": {"from_tier", "to_tier", "reason"},
        "gateway_upstream_attempts": {"tier", "node", "result"},
        "gateway_time_to_first_token_seconds": {"tier"},
        "gateway_request_duration_seconds": {"tier"},
        "gateway_tokens": {"tier", "direction"},
        "gateway_node_up": {"tier", "node"},
        "gateway_node_circuit_state": {"tier", "node"},
        "gateway_node_in_flight": {"tier", "node"},
        "gateway_policy_reloads": {"result"},
        "gateway_session_store_errors": {"op"},
        "gateway_session_spool_turns": set(),
    }
    for family, names in expected.items():
        assert family in moved, family
        for sets in moved.label_sets(family):
            assert {k for k, _ in sets} == names, (family, sets)


async def test_labels_stay_bounded_whatever_clients_send(upstreams, make_gateway) -> None:
    edge = await upstreams("edge-model")
    gateway = await make_gateway(policy_yaml([(edge.url, "edge-model")], []), health_checks=False)
    async with aiohttp.ClientSession() as http:
        for i in range(30):
            # Unknown paths, unknown models, session ids and request ids: none may become
            # a label value.
            async with http.get(f"{gateway.url}/v1/nothing/{i}") as response:
                assert response.status == 404
            async with http.post(
                f"{gateway.url}/v1/chat/completions",
                json={"model": f"model-{i}", "messages": SIMPLE},
                headers={"x-session-id": f"s-{i}", "x-request-id": f"r-{i}"},
            ) as response:
                assert response.status == 404
    metrics = await scrape_metrics(gateway)
    values = metrics.label_values()
    assert not any(v.startswith(("model-", "s-", "r-", "/v1/nothing")) for v in values)
    assert metrics.label_sets("gateway_http_responses") >= {
        (("route", "unmatched"), ("status", "404")),
        (("route", "/v1/chat/completions"), ("status", "404")),
    }
    assert metrics.value("gateway_http_responses_total", route="unmatched", status="404") == 30


async def test_reload_counts_and_drops_removed_nodes(upstreams, make_gateway) -> None:
    edge1, edge2 = await upstreams("edge-model"), await upstreams("edge-model")
    gateway = await make_gateway(
        policy_yaml([(edge1.url, "edge-model"), (edge2.url, "edge-model")], []),
        health_checks=False,
    )
    before = await scrape_metrics(gateway)
    assert {dict(s)["node"] for s in before.label_sets("gateway_node_up")} == {"edge-1", "edge-2"}

    gateway.policy_path.write_text("version: 1\ntiers: [broken\n")
    await _until(gateway, "gateway_policy_reloads_total", result="failure")
    gateway.policy_path.write_text(policy_yaml([(edge2.url, "edge-model")], []))
    after = await _until(gateway, "gateway_policy_reloads_total", result="success")

    assert after.value("gateway_policy_reloads_total", result="failure") == 1
    # The remaining node is now named edge-1 (its URL is edge2's); the old pair is gone.
    nodes = {dict(s)["node"] for s in after.label_sets("gateway_node_up")}
    assert nodes == {"edge-1"}
    assert {dict(s)["node"] for s in after.label_sets("gateway_node_circuit_state")} == nodes


async def _until(gateway, sample: str, **labels: str) -> Metrics:
    return await eventually_value(
        lambda: scrape_metrics(gateway),
        lambda metrics: metrics.get(sample, **labels) >= 1,
        10,
        f"{sample}{labels} counted",
    )


@pytest.mark.redis
async def test_session_store_errors_and_spool_size(upstreams, make_gateway, redis_server) -> None:
    edge = await upstreams("edge-model")
    gateway = await make_gateway(
        policy_yaml([(edge.url, "edge-model")], [], sessions={"redis_timeout_s": 0.3}),
        health_checks=False,
        redis_url=redis_server.url,
    )
    redis_server.stop()
    async with sdk(gateway) as client:
        await client.chat.completions.create(
            model="auto", messages=SIMPLE, extra_headers={"x-session-id": "s1"}
        )
    metrics = await scrape_metrics(gateway)
    assert metrics.value("gateway_session_store_errors_total", op="load") >= 1
    assert metrics.value("gateway_session_spool_turns") == 2  # the user turn and the reply
