"""A client that goes away cancels its upstream work: the upstream sees its connection
closed soon after, whether the client left before the first byte, mid-stream, or while
waiting for a non-streaming answer."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from gateway.state import STATE
from tests.gateway.resilience.conftest import SIMPLE, metric_samples, policy
from tests.scripted import Script

PATIENT = "{connect: 1, first_token: 20, idle: 20, total: 60}"


async def wait_for_disconnect(seen, timeout_s: float = 3.0) -> float:
    deadline = time.monotonic() + timeout_s
    # Polling a plain attribute the scripted server sets: no event to wait on.
    while seen.disconnected_at is None and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    assert seen.disconnected_at is not None, "the upstream never saw the connection close"
    return seen.disconnected_at


async def leave_after(gateway, body: dict[str, object], seconds: float) -> float:
    """Send a request and give up on it after ``seconds``; returns when the client left."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(seconds):
                async with session.post(gateway.url + "/v1/chat/completions", json=body) as r:
                    await r.read()
    return time.monotonic()


@pytest.mark.parametrize(
    ("stream", "fallback"),
    [(True, ""), (False, ""), (False, "  stream_internally: false\n")],
    ids=["stream", "non-stream", "non-stream-direct"],
)
async def test_leaving_before_the_first_byte_cancels_the_upstream_call(
    upstreams, make_gateway, stream, fallback
) -> None:
    edge, cloud = await upstreams("edge-model"), await upstreams("cloud-model")
    edge.script = Script(first_token_delay_s=30)  # thinking for a long time
    gateway = await make_gateway(
        policy(
            [(edge.url, "edge-model")],
            [(cloud.url, "cloud-model")],
            fallback=fallback,
            timeouts=PATIENT,
        ),
        health_checks=False,
    )
    left = await leave_after(gateway, {"messages": SIMPLE, "stream": stream}, 0.5)
    closed = await wait_for_disconnect(edge.seen[0])
    assert closed - left < 1.0
    assert cloud.calls == 0  # a departed client is not a reason to fail over
    await asyncio.sleep(0.1)
    node = gateway.app[STATE].pool.nodes("edge")[0]
    assert node.in_flight == 0  # the slot was given back


async def test_leaving_mid_stream_closes_the_upstream_stream(upstreams, make_gateway) -> None:
    edge, cloud = await upstreams("edge-model"), await upstreams("cloud-model")
    edge.script = Script(chunks=("tick ",) * 300, chunk_delay_s=0.05)
    gateway = await make_gateway(
        policy([(edge.url, "edge-model")], [(cloud.url, "cloud-model")], timeouts=PATIENT),
        health_checks=False,
    )
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            gateway.url + "/v1/chat/completions", json={"messages": SIMPLE, "stream": True}
        )
        received = 0
        async for line in response.content:
            if line.startswith(b"data: "):
                received += 1
            if received == 3:
                break
        response.close()  # hang up mid-answer
        left = time.monotonic()
    closed = await wait_for_disconnect(edge.seen[0])
    assert closed - left < 1.0
    assert cloud.calls == 0
    await asyncio.sleep(0.1)
    samples = await metric_samples(gateway)
    key = ("gateway_requests_total", (("outcome", "client_disconnected"), ("tier", "edge")))
    assert samples.get(key) == 1
    assert gateway.app[STATE].pool.nodes("edge")[0].in_flight == 0


async def test_leaving_during_a_same_node_retry_wait_cancels_it(upstreams, make_gateway) -> None:
    edge, cloud = await upstreams("edge-model"), await upstreams("cloud-model")
    edge.script = Script(behaviour="status", status=429, retry_after="3")
    gateway = await make_gateway(
        policy(
            [(edge.url, "edge-model")],
            [(cloud.url, "cloud-model")],
            timeouts=PATIENT,
        ),
        health_checks=False,
    )
    await leave_after(gateway, {"messages": SIMPLE}, 0.5)
    await asyncio.sleep(3.5)  # past the Retry-After: a cancelled request must not retry
    assert (edge.calls, cloud.calls) == (1, 0)
    assert gateway.app[STATE].pool.nodes("edge")[0].in_flight == 0
