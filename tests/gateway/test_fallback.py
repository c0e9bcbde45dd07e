"""Fallback before the first byte: other nodes of the tier, then the other tier."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest

from gateway.state import POOL
from tests.helpers import chat, eventually, policy_yaml, sdk
from tests.scripted import Script, unused_port

SIMPLE = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("stream", [False, True])
async def test_edge_refusing_connections_falls_back_to_cloud(
    upstreams, make_gateway, stream
) -> None:
    cloud = await upstreams("cloud-model")
    dead = f"http://127.0.0.1:{unused_port()}"
    gateway = await make_gateway(
        policy_yaml([(dead, "edge-model")], [(cloud.url, "cloud-model")]), health_checks=False
    )
    raw = await chat(gateway, stream=stream)
    assert raw.text == "Hello from the upstream."
    assert raw.model == "cloud-model"  # the model that actually answered
    assert raw.headers["x-gateway-tier"] == "cloud"
    assert raw.headers["x-gateway-fallback"] == "edge-1:connect_error"
    assert cloud.calls == 1


async def test_503_moves_to_the_next_node_of_the_same_tier_first(upstreams, make_gateway) -> None:
    busy, spare, cloud = (
        await upstreams("edge-model"),
        await upstreams("edge-model"),
        await upstreams("c"),
    )
    busy.script = Script(behaviour="status", status=503)
    gateway = await make_gateway(
        policy_yaml([(busy.url, "edge-model"), (spare.url, "edge-model")], [(cloud.url, "c")]),
        health_checks=False,
    )
    # Make the busy node the first choice: the spare looks busier.
    nodes = gateway.app[POOL].nodes("edge")
    nodes[1].load_score = 0.5
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=SIMPLE)
    assert raw.headers["x-gateway-tier"] == "edge"
    assert raw.headers["x-gateway-node"] == "edge-2"
    assert raw.headers["x-gateway-fallback"] == "edge-1:overloaded"
    assert (busy.calls, spare.calls, cloud.calls) == (1, 1, 0)


@pytest.mark.parametrize("stream", [False, True])
async def test_timeout_before_first_byte_falls_back(two_tiers, stream) -> None:
    # total bounds the whole request (failover included): room for the cloud.
    silent, cloud, gateway = await two_tiers(
        timeouts="{connect: 1, first_token: 0.5, idle: 1, total: 5}"
    )
    silent.script = Script(behaviour="hang")
    started = time.monotonic()
    raw = await chat(gateway, stream=stream)
    elapsed = time.monotonic() - started
    assert raw.headers["x-gateway-tier"] == "cloud"
    assert raw.headers["x-gateway-fallback"] == "edge-1:timeout"
    assert 0.5 <= elapsed < 3
    assert (silent.calls, cloud.calls) == (1, 1)


async def test_500_falls_back_and_repeated_failures_open_the_circuit(two_tiers) -> None:
    broken, cloud, gateway = await two_tiers()
    broken.script = Script(behaviour="status", status=500)
    async with sdk(gateway) as client:
        for _ in range(4):
            raw = await client.chat.completions.with_raw_response.create(
                model="auto", messages=SIMPLE
            )
            assert raw.headers["x-gateway-tier"] == "cloud"
    # failure_threshold is 2: after two failures the circuit is open and the node is skipped.
    assert broken.calls == 2
    assert cloud.calls == 4


async def test_half_open_probe_returns_traffic_to_a_recovered_node(two_tiers) -> None:
    flaky, _, gateway = await two_tiers()
    flaky.script = Script(behaviour="status", status=502)
    async with sdk(gateway) as client:
        for _ in range(2):
            await client.chat.completions.create(model="auto", messages=SIMPLE)
        flaky.script = Script()  # recovers
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=SIMPLE)
        assert raw.headers["x-gateway-tier"] == "cloud"  # circuit still open
        await asyncio.sleep(0.6)  # open_s is 0.5: the next request is the half-open probe
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=SIMPLE)
        assert raw.headers["x-gateway-tier"] == "edge"
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=SIMPLE)
        assert raw.headers["x-gateway-tier"] == "edge"  # closed again


async def test_nothing_can_serve_gives_503_with_retry_after(make_gateway) -> None:
    dead_edge, dead_cloud = f"http://127.0.0.1:{unused_port()}", f"http://127.0.0.1:{unused_port()}"
    gateway = await make_gateway(
        policy_yaml([(dead_edge, "e")], [(dead_cloud, "c")]), health_checks=False
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + "/v1/chat/completions", json={"model": "auto", "messages": SIMPLE}
        ) as response,
    ):
        body = await response.json()
        assert response.status == 503
        assert response.headers["Retry-After"] == "2"
    assert body["error"]["code"] == "no_healthy_upstream"
    assert "edge-1: connect_error" in body["error"]["message"]
    assert "cloud-1: connect_error" in body["error"]["message"]


async def test_model_pin_does_not_cross_tiers(make_gateway, upstreams) -> None:
    cloud = await upstreams("cloud-model")
    gateway = await make_gateway(
        policy_yaml(
            [(f"http://127.0.0.1:{unused_port()}", "edge-model")], [(cloud.url, "cloud-model")]
        ),
        health_checks=False,
    )
    async with sdk(gateway) as client:
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(model="edge-model", messages=SIMPLE)
    assert info.value.status_code == 503
    assert cloud.calls == 0


async def test_client_errors_are_passed_on_not_retried(two_tiers) -> None:
    edge, cloud, gateway = await two_tiers()
    edge.script = Script(
        behaviour="status",
        status=400,
        error_code="content_policy_violation",
        error_message="refused by the content filter",
    )
    async with sdk(gateway) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="auto", messages=SIMPLE)
    assert info.value.body["code"] == "content_policy_violation"
    assert info.value.body["message"] == "refused by the content filter"
    assert (edge.calls, cloud.calls) == (1, 0)


async def test_context_length_exceeded_goes_to_the_larger_window(two_tiers) -> None:
    edge, cloud, gateway = await two_tiers()
    edge.script = Script(behaviour="status", status=400, error_code="context_length_exceeded")
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=SIMPLE)
    assert raw.headers["x-gateway-tier"] == "cloud"
    assert raw.headers["x-gateway-fallback"] == "edge-1:context_length"
    assert (edge.calls, cloud.calls) == (1, 1)


async def test_unhealthy_node_is_skipped_without_an_attempt(two_tiers) -> None:
    edge, _, gateway = await two_tiers(health_checks=True)
    edge.health_status = 503
    node = gateway.app[POOL].nodes("edge")[0]
    await eventually(lambda: node.healthy is False, what="the node marked down")
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=SIMPLE)
    assert raw.headers["x-gateway-tier"] == "cloud"
    assert edge.calls == 0
