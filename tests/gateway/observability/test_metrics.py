"""GET /metrics: the families an operator's dashboard needs, with bounded labels."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import policy_yaml
from tests.gateway.observability.conftest import SIMPLE, sdk
from tests.scripted import unused_port

Families = dict[str, dict[str, object]]


async def scrape(gateway) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """Family name -> (sample name, labels, value), from the text exposition."""
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/metrics") as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            text = await response.text()
    return {
        family.name: [(s.name, dict(s.labels), s.value) for s in family.samples]
        for family in text_string_to_metric_families(text)
    }


def value(families, sample: str, **labels: str) -> float:
    for family in families.values():
        for name, got, number in family:
            if name == sample and got == labels:
                return number
    raise AssertionError(f"no sample {sample}{labels}")


def label_sets(families, family: str) -> set[tuple[tuple[str, str], ...]]:
    """Label sets of a family's samples, without histogram ``le`` buckets."""
    return {
        tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        for _, labels, _ in families[family]
    }


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

    routed = await scrape(gateway)
    assert value(routed, "gateway_requests_total", tier="edge", outcome="ok") == 2
    assert value(routed, "gateway_route_decisions_total", tier="edge", reason="score") == 2
    assert value(routed, "gateway_tokens_total", tier="edge", direction="prompt") == 10
    assert value(routed, "gateway_tokens_total", tier="edge", direction="completion") == 10
    assert value(routed, "gateway_time_to_first_token_seconds_count", tier="edge") == 1
    assert value(routed, "gateway_request_duration_seconds_count", tier="edge") == 2
    assert (
        value(routed, "gateway_upstream_attempts_total", tier="edge", node="edge-1", result="ok")
        == 2
    )
    assert (
        value(routed, "gateway_http_responses_total", route="/v1/chat/completions", status="200")
        == 2
    )
    assert value(routed, "gateway_node_up", tier="edge", node="edge-1") == 0  # not checked yet
    assert value(routed, "gateway_node_circuit_state", tier="cloud", node="cloud-1") == 0
    assert routed["gateway_fallbacks"] == []  # a family with no moves yet

    moved = await scrape(fallback_gateway)
    assert value(moved, "gateway_requests_total", tier="cloud", outcome="ok") == 2
    assert value(moved, "gateway_route_decisions_total", tier="edge", reason="score") == 2
    assert (
        value(
            moved,
            "gateway_fallbacks_total",
            from_tier="edge",
            to_tier="cloud",
            reason="connect_error",
        )
        == 2
    )
    assert (
        value(
            moved,
            "gateway_upstream_attempts_total",
            tier="edge",
            node="edge-1",
            result="connect_error",
        )
        == 2
    )
    assert value(moved, "gateway_time_to_first_token_seconds_count", tier="cloud") == 1
    # The families the dashboard and the docs name, with their label names.
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
        for sets in label_sets(moved, family):
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
    families = await scrape(gateway)
    all_values = {
        v for family in families.values() for _, labels, _ in family for v in labels.values()
    }
    assert not any(v.startswith(("model-", "s-", "r-", "/v1/nothing")) for v in all_values)
    assert label_sets(families, "gateway_http_responses") >= {
        (("route", "unmatched"), ("status", "404")),
        (("route", "/v1/chat/completions"), ("status", "404")),
    }
    assert value(families, "gateway_http_responses_total", route="unmatched", status="404") == 30


async def test_reload_counts_and_drops_removed_nodes(upstreams, make_gateway) -> None:
    edge1, edge2 = await upstreams("edge-model"), await upstreams("edge-model")
    gateway = await make_gateway(
        policy_yaml([(edge1.url, "edge-model"), (edge2.url, "edge-model")], []),
        health_checks=False,
    )
    before = await scrape(gateway)
    assert {dict(s)["node"] for s in label_sets(before, "gateway_node_up")} == {"edge-1", "edge-2"}

    gateway.policy_path.write_text("version: 1\ntiers: [broken\n")
    await _until(gateway, "gateway_policy_reloads_total", result="failure")
    gateway.policy_path.write_text(policy_yaml([(edge2.url, "edge-model")], []))
    after = await _until(gateway, "gateway_policy_reloads_total", result="success")

    assert value(after, "gateway_policy_reloads_total", result="failure") == 1
    # The remaining node is now named edge-1 (its URL is edge2's); the old pair is gone.
    nodes = {dict(s)["node"] for s in label_sets(after, "gateway_node_up")}
    assert nodes == {"edge-1"}
    assert {dict(s)["node"] for s in label_sets(after, "gateway_node_circuit_state")} == nodes


async def _until(gateway, sample: str, **labels: str):
    deadline = time.monotonic() + 10
    while True:
        families = await scrape(gateway)
        try:
            if value(families, sample, **labels) >= 1:
                return families
        except AssertionError:
            pass
        assert time.monotonic() < deadline, f"{sample}{labels} never counted"
        await asyncio.sleep(0.05)


@pytest.mark.redis
async def test_session_store_errors_and_spool_size(upstreams, make_gateway, redis_server) -> None:
    edge = await upstreams("edge-model")
    gateway = await make_gateway(
        policy_yaml([(edge.url, "edge-model")], [], extra="sessions:\n  redis_timeout_s: 0.3\n"),
        health_checks=False,
        redis_url=redis_server.url,
    )
    redis_server.stop()
    async with sdk(gateway) as client:
        await client.chat.completions.create(
            model="auto", messages=SIMPLE, extra_headers={"x-session-id": "s1"}
        )
    families = await scrape(gateway)
    assert value(families, "gateway_session_store_errors_total", op="load") >= 1
    assert value(families, "gateway_session_spool_turns") == 2  # the user turn and the reply
