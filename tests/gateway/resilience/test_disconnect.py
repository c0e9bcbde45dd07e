"""A client that goes away cancels its upstream work: the upstream sees its connection
closed soon after, whether the client left before the first byte, mid-stream, or while
waiting for a non-streaming answer."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from gateway.state import POOL
from tests.gateway.resilience.conftest import SIMPLE
from tests.helpers import Metrics, eventually, eventually_value, scrape_metrics
from tests.scripted import Script

PATIENT = "{connect: 1, first_token: 20, idle: 20, total: 60}"


async def wait_for_disconnect(seen, timeout_s: float = 3.0) -> float:
    await eventually(
        lambda: seen.disconnected_at is not None, timeout_s, "the upstream saw the connection close"
    )
    return seen.disconnected_at


async def handled_as_departed(gateway) -> Metrics:
    """Wait until the gateway is done with the request whose client left (the middleware
    counts it once the handler's cancellation has run): nothing can follow from it after."""
    return await eventually_value(
        lambda: scrape_metrics(gateway),
        lambda metrics: (
            metrics.get(
                "gateway_http_responses_total", route="/v1/chat/completions", status="disconnected"
            )
            == 1
        ),
        what="the departed request counted",
    )


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
    [(True, {}), (False, {}), (False, {"stream_internally": False})],
    ids=["stream", "non-stream", "non-stream-direct"],
)
async def test_leaving_before_the_first_byte_cancels_the_upstream_call(
    two_tiers, stream, fallback
) -> None:
    edge, cloud, gateway = await two_tiers(fallback=fallback, timeouts=PATIENT)
    edge.script = Script(first_token_delay_s=30)  # thinking for a long time
    left = await leave_after(gateway, {"model": "auto", "messages": SIMPLE, "stream": stream}, 0.5)
    closed = await wait_for_disconnect(edge.seen[0])
    assert closed - left < 1.0
    await handled_as_departed(gateway)
    assert cloud.calls == 0  # a departed client is not a reason to fail over
    node = gateway.app[POOL].nodes("edge")[0]
    assert node.in_flight == 0  # the slot was given back


async def test_leaving_mid_stream_closes_the_upstream_stream(two_tiers) -> None:
    edge, cloud, gateway = await two_tiers(timeouts=PATIENT)
    edge.script = Script(chunks=("tick ",) * 300, chunk_delay_s=0.05)
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "auto", "messages": SIMPLE, "stream": True},
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
    metrics = await handled_as_departed(gateway)
    assert cloud.calls == 0
    assert metrics.value("gateway_requests_total", tier="edge", outcome="client_disconnected") == 1
    assert gateway.app[POOL].nodes("edge")[0].in_flight == 0


async def test_leaving_during_a_same_node_retry_wait_cancels_it(two_tiers) -> None:
    edge, cloud, gateway = await two_tiers(timeouts=PATIENT)
    edge.script = Script(behaviour="status", status=429, retry_after="3")
    await leave_after(gateway, {"model": "auto", "messages": SIMPLE}, 0.5)
    # Once the gateway is done with the request, no retry can come from it: had the wait
    # not been cancelled, the request would still be waiting out the 3 s Retry-After.
    await handled_as_departed(gateway)
    assert (edge.calls, cloud.calls) == (1, 0)
    assert gateway.app[POOL].nodes("edge")[0].in_flight == 0
