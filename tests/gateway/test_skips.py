"""Nodes passed over without an attempt are named: in ``x-gateway-fallback``, on the
request span and in ``gateway_node_skips_total``, in order with the failed attempts."""

from __future__ import annotations

import asyncio

import openai
import pytest

from gateway.policy.parse import parse_policy
from gateway.state import POOL
from gateway.upstream.pool import NodePool, Skip
from tests.conftest import RunningGateway
from tests.gateway.observability.conftest import SIMPLE, attrs, make_spans
from tests.helpers import eventually, policy_yaml, scrape_metrics, sdk
from tests.scripted import Script

TO_CLOUD = {"x-gateway-tier": "cloud"}


async def _ask(gateway: RunningGateway, *, stream: bool = False, **kw: object):  # type: ignore[no-untyped-def]
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto",
            messages=SIMPLE,  # type: ignore[arg-type]
            stream=stream,
            **kw,  # type: ignore[arg-type]
        )
        if stream:
            [c async for c in raw.parse()]  # type: ignore[union-attr]
    return raw


async def _skips_metric(gateway: RunningGateway) -> dict[tuple[str, str, str], float]:
    metrics = await scrape_metrics(gateway)
    return {
        (s.labels["tier"], s.labels["node"], s.labels["reason"]): s.value
        for s in metrics.samples("gateway_node_skips_total")
    }


async def _fallbacks_metric(gateway: RunningGateway) -> dict[tuple[str, str, str], float]:
    metrics = await scrape_metrics(gateway)
    return {
        (s.labels["from_tier"], s.labels["to_tier"], s.labels["reason"]): s.value
        for s in metrics.samples("gateway_fallbacks_total")
    }


@pytest.mark.parametrize("stream", [False, True])
async def test_an_unhealthy_cloud_node_is_named_when_the_edge_answers(
    two_tiers, stream: bool
) -> None:
    # The case: routed to the cloud by score, its only node failing health checks.
    spans = make_spans()
    _, cloud, gateway = await two_tiers(cloud_above=0.0, health_checks=True, tracing=spans.tracing)
    cloud.health_status = 503
    node = gateway.app[POOL].nodes("cloud")[0]
    await eventually(lambda: node.healthy is False)

    raw = await _ask(gateway, stream=stream)
    await spans.settled()

    assert raw.headers["x-gateway-route-reason"].startswith("score ")
    assert raw.headers["x-gateway-tier"] == "edge"
    assert raw.headers["x-gateway-fallback"] == "cloud-1:unhealthy"
    assert cloud.calls == 0  # skipped, not tried
    s = attrs(spans.server())
    assert s["gateway.route_tier"] == "cloud"
    assert s["gateway.fallback.failures"] == ["cloud-1:unhealthy"]
    assert s["gateway.fallback.skipped"] == ["cloud-1:unhealthy"]
    assert (s["gateway.fallback.from"], s["gateway.fallback.to"]) == ("cloud", "edge")
    assert s["gateway.fallback.reason"] == "unhealthy"
    assert [attrs(a)["gateway.node"] for a in spans.attempts()] == ["edge-1"]
    assert await _skips_metric(gateway) == {("cloud", "cloud-1", "unhealthy"): 1.0}
    assert await _fallbacks_metric(gateway) == {("cloud", "edge", "unhealthy"): 1.0}


async def test_an_open_circuit_is_named_after_the_failures_that_opened_it(two_tiers) -> None:
    spans = make_spans()
    _, cloud, gateway = await two_tiers(health={"open_s": 60}, tracing=spans.tracing)
    cloud.script = Script(behaviour="status", status=500)

    first = await _ask(gateway, extra_headers=TO_CLOUD)
    # Tried, retried once, then failure_threshold (2) opened the circuit.
    assert first.headers["x-gateway-fallback"] == "cloud-1:status_5xx, cloud-1:status_5xx"
    assert cloud.calls == 2
    spans.clear()

    second = await _ask(gateway, extra_headers=TO_CLOUD)
    await spans.settled()

    assert second.headers["x-gateway-tier"] == "edge"
    assert second.headers["x-gateway-fallback"] == "cloud-1:circuit_open"
    assert cloud.calls == 2
    s = attrs(spans.server())
    assert s["gateway.fallback.skipped"] == ["cloud-1:circuit_open"]
    assert s["gateway.fallback.reason"] == "circuit_open"
    assert await _skips_metric(gateway) == {("cloud", "cloud-1", "circuit_open"): 1.0}
    fallbacks = await _fallbacks_metric(gateway)
    assert fallbacks[("cloud", "edge", "circuit_open")] == 1.0
    assert fallbacks[("cloud", "edge", "status_5xx")] == 1.0


async def test_a_node_at_capacity_is_named_while_a_slow_answer_holds_its_slot(
    upstreams, make_gateway
) -> None:
    edge, cloud = await upstreams("edge-model"), await upstreams("cloud-model")
    edge.script = Script(first_token_delay_s=1.5)
    spans = make_spans()
    gateway = await make_gateway(
        policy_yaml(
            [{"url": edge.url, "model": "edge-model", "max_concurrency": 1}],
            [(cloud.url, "cloud-model")],
        ),
        health_checks=False,
        tracing=spans.tracing,
    )
    node = gateway.app[POOL].nodes("edge")[0]

    holder = asyncio.create_task(_ask(gateway))
    await eventually(lambda: edge.in_flight == 1 and node.full)
    raw = await _ask(gateway, stream=True)
    held = await holder
    await spans.settled(servers=2)

    assert held.headers["x-gateway-tier"] == "edge"
    assert "x-gateway-fallback" not in held.headers
    assert raw.headers["x-gateway-tier"] == "cloud"
    assert raw.headers["x-gateway-fallback"] == "edge-1:at_capacity"
    assert edge.calls == 1
    skipped = [
        attrs(s)["gateway.fallback.skipped"]
        for s in spans.all()
        if "gateway.fallback.skipped" in attrs(s)
    ]
    assert skipped == [["edge-1:at_capacity"]]
    assert await _skips_metric(gateway) == {("edge", "edge-1", "at_capacity"): 1.0}
    assert await _fallbacks_metric(gateway) == {("edge", "cloud", "at_capacity"): 1.0}


async def test_a_tier_without_nodes_is_named(upstreams, make_gateway) -> None:
    edge = await upstreams("edge-model")
    spans = make_spans()
    gateway = await make_gateway(
        policy_yaml([(edge.url, "edge-model")], []), health_checks=False, tracing=spans.tracing
    )

    raw = await _ask(gateway, extra_headers=TO_CLOUD)
    await spans.settled()

    assert raw.headers["x-gateway-tier"] == "edge"
    assert raw.headers["x-gateway-fallback"] == "cloud:no_nodes"
    s = attrs(spans.server())
    assert s["gateway.fallback.skipped"] == ["cloud:no_nodes"]
    assert (s["gateway.fallback.from"], s["gateway.fallback.reason"]) == ("cloud", "no_nodes")
    assert await _skips_metric(gateway) == {("cloud", "", "no_nodes"): 1.0}


async def test_skips_and_failed_attempts_are_listed_in_order(upstreams, make_gateway) -> None:
    # edge-1 fails, edge-2 is unhealthy: the move to the cloud names both, as they happened.
    broken, sick, cloud = (
        await upstreams("edge-model"),
        await upstreams("edge-model"),
        await upstreams("cloud-model"),
    )
    broken.script = Script(behaviour="status", status=503)
    gateway = await make_gateway(
        policy_yaml([(broken.url, "edge-model"), (sick.url, "edge-model")], [(cloud.url, "c")]),
        health_checks=False,
    )
    gateway.app[POOL].nodes("edge")[1].healthy = False  # as a failed health check leaves it

    raw = await _ask(gateway)

    assert raw.headers["x-gateway-tier"] == "cloud"
    assert raw.headers["x-gateway-fallback"] == "edge-1:overloaded, edge-2:unhealthy"
    assert sick.calls == 0


async def test_a_request_nothing_can_take_names_every_skip_in_its_503(
    upstreams, make_gateway
) -> None:
    edge = await upstreams("edge-model")
    edge.health_status = 503
    gateway = await make_gateway(policy_yaml([(edge.url, "edge-model")], []))
    node = gateway.app[POOL].nodes("edge")[0]
    await eventually(lambda: node.healthy is False)
    async with sdk(gateway) as client:
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(model="auto", messages=SIMPLE)  # type: ignore[arg-type]
    assert info.value.status_code == 503
    assert "(edge-1: unhealthy; cloud: no_nodes)" in info.value.message


def test_pool_skips_name_each_node_in_policy_order() -> None:
    pool = NodePool(
        parse_policy(
            "version: 1\ntiers:\n  edge:\n    nodes:\n"
            "      - {url: 'http://a', model: m, name: a}\n"
            "      - {url: 'http://b', model: m, name: b}\n"
            "      - {url: 'http://c', model: m, name: c, max_concurrency: 1}\n"
            "      - {url: 'http://d', model: m, name: d}\n"
            "      - {url: 'http://e', model: other, name: e}\n"
        )
    )
    a, b, c, _, _ = pool.nodes("edge")
    a.healthy = False
    for _ in range(b.breaker.failure_threshold):
        b.breaker.record_failure()
    c.in_flight = 1
    assert pool.skips("edge", exclude=frozenset({"d"})) == [
        Skip(tier="edge", node="a", reason="unhealthy"),
        Skip(tier="edge", node="b", reason="circuit_open"),
        Skip(tier="edge", node="c", reason="at_capacity"),
        # d was tried (excluded): not a skip; e can serve, so it has no reason to list.
    ]
    assert pool.skips("edge", model="other") == []
    assert pool.skips("edge", model="missing") == [Skip(tier="edge", node=None, reason="no_nodes")]
    assert pool.skips("cloud") == [Skip(tier="cloud", node=None, reason="no_nodes")]
    # No node of the tier supports what the request needs: the tier cannot serve it.
    assert pool.skips("edge", needs=frozenset({"json_schema"})) == [
        Skip(tier="edge", node=None, reason="no_nodes")
    ]
    # Unhealthy wins over an open circuit, which wins over a full node: the lasting cause.
    a.breaker.record_failure()
    a.breaker.record_failure()
    a.in_flight = a.spec.max_concurrency
    assert a.skip_reason() == "unhealthy"
