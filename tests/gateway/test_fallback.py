"""Fallback before the first byte: other nodes of the tier, then the other tier."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest

from tests.conftest import policy_yaml
from tests.scripted import Script, unused_port

SIMPLE = [{"role": "user", "content": "hi"}]


def sdk(gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("stream", [False, True])
async def test_edge_refusing_connections_falls_back_to_cloud(
    upstreams, make_gateway, stream
) -> None:
    cloud = await upstreams("cloud-model")
    dead = f"http://127.0.0.1:{unused_port()}"
    gateway = await make_gateway(
        policy_yaml([(dead, "edge-model")], [(cloud.url, "cloud-model")]), health_checks=False
    )
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=SIMPLE, stream=stream
        )
        if stream:
            chunks = [c async for c in raw.parse()]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            model = chunks[0].model
        else:
            completion = raw.parse()
            text, model = completion.choices[0].message.content, completion.model
    assert text == "Hello from the upstream."
    assert model == "cloud-model"  # the model that actually answered
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
    nodes = gateway.app[__import__("gateway.state", fromlist=["STATE"]).STATE].pool.nodes("edge")
    nodes[1].load_score = 0.5
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=SIMPLE)
    assert raw.headers["x-gateway-tier"] == "edge"
    assert raw.headers["x-gateway-node"] == "edge-2"
    assert raw.headers["x-gateway-fallback"] == "edge-1:overloaded"
    assert (busy.calls, spare.calls, cloud.calls) == (1, 1, 0)


@pytest.mark.parametrize("stream", [False, True])
async def test_timeout_before_first_byte_falls_back(upstreams, make_gateway, stream) -> None:
    silent, cloud = await upstreams("edge-model"), await upstreams("cloud-model")
    silent.script = Script(behaviour="hang")
    gateway = await make_gateway(
        policy_yaml(
            [(silent.url, "edge-model")],
            [(cloud.url, "cloud-model")],
            # total bounds the whole request (failover included): room for the cloud.
            timeouts="{connect: 1, first_token: 0.5, idle: 1, total: 5}",
        ),
        health_checks=False,
    )
    started = time.monotonic()
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=SIMPLE, stream=stream
        )
        if stream:
            [c async for c in raw.parse()]
    elapsed = time.monotonic() - started
    assert raw.headers["x-gateway-tier"] == "cloud"
    assert raw.headers["x-gateway-fallback"] == "edge-1:timeout"
    assert 0.5 <= elapsed < 3
    assert (silent.calls, cloud.calls) == (1, 1)


async def test_500_falls_back_and_repeated_failures_open_the_circuit(
    upstreams, make_gateway
) -> None:
    broken, cloud = await upstreams("edge-model"), await upstreams("cloud-model")
    broken.script = Script(behaviour="status", status=500)
    gateway = await make_gateway(
        policy_yaml([(broken.url, "edge-model")], [(cloud.url, "cloud-model")]), health_checks=False
    )
    async with sdk(gateway) as client:
        for _ in range(4):
            raw = await client.chat.completions.with_raw_response.create(
                model="auto", messages=SIMPLE
            )
            assert raw.headers["x-gateway-tier"] == "cloud"
    # failure_threshold is 2: after two failures the circuit is open and the node is skipped.
    assert broken.calls == 2
    assert cloud.calls == 4


async def test_half_open_probe_returns_traffic_to_a_recovered_node(upstreams, make_gateway) -> None:
    flaky, cloud = await upstreams("edge-model"), await upstreams("cloud-model")
    flaky.script = Script(behaviour="status", status=502)
    gateway = await make_gateway(
        policy_yaml([(flaky.url, "edge-model")], [(cloud.url, "cloud-model")]), health_checks=False
    )
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
        session.post(gateway.url + "/v1/chat/completions", json={"messages": SIMPLE}) as response,
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


async def test_client_errors_are_passed_on_not_retried(upstreams, make_gateway) -> None:
    edge, cloud = await upstreams("edge-model"), await upstreams("cloud-model")
    edge.script = Script(
        behaviour="status",
        status=400,
        error_code="content_policy_violation",
        error_message="refused by the content filter",
    )
    gateway = await make_gateway(
        policy_yaml([(edge.url, "edge-model")], [(cloud.url, "cloud-model")]), health_checks=False
    )
    async with sdk(gateway) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="auto", messages=SIMPLE)
    assert info.value.body["code"] == "content_policy_violation"
    assert info.value.body["message"] == "refused by the content filter"
    assert (edge.calls, cloud.calls) == (1, 0)


async def test_context_length_exceeded_goes_to_the_larger_window(upstreams, make_gateway) -> None:
    edge, cloud = await upstreams("edge-model"), await upstreams("cloud-model")
    edge.script = Script(behaviour="status", status=400, error_code="context_length_exceeded")
    gateway = await make_gateway(
        policy_yaml([(edge.url, "edge-model")], [(cloud.url, "cloud-model")]), health_checks=False
    )
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=SIMPLE)
    assert raw.headers["x-gateway-tier"] == "cloud"
    assert raw.headers["x-gateway-fallback"] == "edge-1:context_length"
    assert (edge.calls, cloud.calls) == (1, 1)


async def test_unhealthy_node_is_skipped_without_an_attempt(upstreams, make_gateway) -> None:
    edge, cloud = await upstreams("edge-model"), await upstreams("cloud-model")
    edge.health_status = 503
    gateway = await make_gateway(
        policy_yaml([(edge.url, "edge-model")], [(cloud.url, "cloud-model")])
    )
    await asyncio.sleep(0.3)  # one health round
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=SIMPLE)
    assert raw.headers["x-gateway-tier"] == "cloud"
    assert edge.calls == 0
