"""A real edge node SIGKILLed in the middle of a streamed answer.

Against a real ``python -m edge_node`` subprocess (SmolLM2 through llama.cpp) and a
scripted cloud node, these tests prove that:

- a stream already answering from the edge (status 200, text on the wire) still ends
  normally when the node dies: the cloud continues the edge's partial text in the same
  response (prefill), the edge's text stays at the start, each chunk names the model that
  wrote it, and the official SDK sees ``finish_reason="stop"`` and no exception;
- the dead node is then taken out of rotation by either mechanism the gateway has: the
  circuit breaker (each failed attempt counts; ``health.failure_threshold`` of them open
  it) or the active health checks (``/readyz`` and ``gateway_node_up`` say it is down);
- once it is out, an edge-bound request is answered by the cloud without an attempt on
  the dead node;
- the killed process is reaped, its log is kept, and nothing is left running.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from tests.conftest import GatewayFactory, RunningGateway
from tests.fixtures.edge import EdgeNodeProcess, start_edge_node, stop_edge_node
from tests.gateway.resilience.conftest import policy
from tests.helpers import eventually_value, scrape_metrics, sdk
from tests.scripted import Script, ScriptedUpstream

pytestmark = pytest.mark.edge_model

CLOUD_MODEL = "cloud-model"
CLOUD_REST = (" and", " so", " on", ".")
"""What the scripted cloud writes when asked to continue."""
COUNTING: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Count from one to one thousand, in words."}
]
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
EDGE_CHUNKS_BEFORE_KILL = 3
MAX_TOKENS = 1500
"""With ``ignore_eos``, far more than the edge writes before the kill."""
OPEN_S = 60
"""Long enough that no half-open probe reaches the dead node during a test."""

EdgeProcess = tuple[subprocess.Popen[bytes], EdgeNodeProcess]
StartUpstream = Callable[[str], Awaitable[ScriptedUpstream]]


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[EdgeProcess]:
    """An edge node of this test's own, in a subprocess the test may kill."""
    try:
        process, node = await asyncio.to_thread(start_edge_node, tmp_path / "edge_node.log")
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield process, node
    finally:
        await asyncio.to_thread(stop_edge_node, process)  # a no-op once it was killed and reaped


async def gateway_over(
    make_gateway: GatewayFactory,
    upstreams: StartUpstream,
    node: EdgeNodeProcess,
    *,
    health_interval_s: float,
) -> tuple[RunningGateway, ScriptedUpstream]:
    """The gateway with the real edge node as edge-1 and a scripted cloud-1."""
    cloud = await upstreams(CLOUD_MODEL)
    cloud.script = Script(chunks=CLOUD_REST, role_chunk=True)
    text = policy(
        [(node.url, node.model)],
        [(cloud.url, CLOUD_MODEL)],
        # first_token leaves room for llama.cpp's prompt evaluation on a busy CPU.
        timeouts="{connect: 1, first_token: 30, idle: 10, total: 60}",
        health={
            "interval_s": health_interval_s,
            "timeout_s": 1,
            "failure_threshold": 2,
            "open_s": OPEN_S,
        },
    )
    gateway = await make_gateway(text)
    # The premise: the gateway has seen the edge node up before it is killed.
    await eventually_value(lambda: edge_status(gateway), lambda s: s["healthy"] is True, 10)
    return gateway, cloud


async def edge_status(gateway: RunningGateway) -> dict[str, object]:
    """edge-1's entry in /readyz: ``{"node", "healthy", "circuit"}``."""
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/readyz") as response:
        body = await response.json()
    [entry] = [n for n in body["tiers"]["edge"] if n["node"] == "edge-1"]
    return dict(entry)


async def edge_attempts(gateway: RunningGateway) -> dict[str, float]:
    """``gateway_upstream_attempts_total`` of edge-1, by result."""
    metrics = await scrape_metrics(gateway)
    return {
        s.labels["result"]: s.value
        for s in metrics.samples("gateway_upstream_attempts_total", node="edge-1")
    }


async def edge_gauge(gateway: RunningGateway, name: str) -> float:
    return (await scrape_metrics(gateway)).value(name, tier="edge", node="edge-1")


def text_of(chunk: ChatCompletionChunk) -> str:
    return "".join(choice.delta.content or "" for choice in chunk.choices)


def wrote_something(chunk: ChatCompletionChunk) -> bool:
    return any(choice.delta.content or choice.finish_reason for choice in chunk.choices)


@dataclass(slots=True, kw_only=True)
class KilledStream:
    """What the client of the stream got, and the fate of the node killed under it."""

    headers: dict[str, str]
    chunks: list[ChatCompletionChunk]
    returncode: int | None


async def stream_and_kill(
    gateway: RunningGateway, process: subprocess.Popen[bytes]
) -> KilledStream:
    """Stream a long edge answer with the SDK; SIGKILL the node once text has arrived."""
    chunks: list[ChatCompletionChunk] = []
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="edge",
            messages=COUNTING,
            stream=True,
            max_tokens=MAX_TOKENS,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},  # an edge node option: no early stop
        )
        with_text = 0
        async for chunk in raw.parse():
            chunks.append(chunk)
            with_text += bool(text_of(chunk))
            if with_text == EDGE_CHUNKS_BEFORE_KILL:
                os.kill(process.pid, signal.SIGKILL)
    # Reaped here; None if the stream ended before the kill (the assertions then say so).
    killed = with_text >= EDGE_CHUNKS_BEFORE_KILL
    returncode = await asyncio.to_thread(process.wait, 10) if killed else process.poll()
    return KilledStream(headers=dict(raw.headers), chunks=chunks, returncode=returncode)


def assert_finished_by_the_cloud(
    out: KilledStream, node: EdgeNodeProcess, cloud: ScriptedUpstream
) -> None:
    """The stream went edge, then cloud, and ended normally, as one answer."""
    assert out.returncode == -signal.SIGKILL  # it really died under the stream, and is reaped
    # The headers went out while the edge was answering: they can't mention the cloud.
    assert out.headers["x-gateway-tier"] == "edge"
    assert out.headers["x-gateway-node"] == "edge-1"
    writers = [c.model for c in out.chunks if wrote_something(c)]
    switch = writers.index(CLOUD_MODEL)
    assert switch >= EDGE_CHUNKS_BEFORE_KILL
    assert writers == [node.model] * switch + [CLOUD_MODEL] * (len(writers) - switch)
    edge_text = "".join(text_of(c) for c in out.chunks if c.model == node.model)
    assert edge_text.strip()
    # The edge's text is kept at the start; the cloud only adds the rest.
    assert "".join(map(text_of, out.chunks)) == edge_text + "".join(CLOUD_REST)
    finish = [ch.finish_reason for c in out.chunks for ch in c.choices if ch.finish_reason]
    assert finish == ["stop"]
    # Usage adds both attempts: the edge's estimated at one token per text chunk.
    usage = out.chunks[-1].usage
    assert usage is not None and usage.completion_tokens == switch + len(CLOUD_REST)
    # One answer throughout: the continuation kept the edge stream's id.
    assert len({c.id for c in out.chunks}) == 1
    # The cloud was asked to continue exactly that text, not to start over.
    assert cloud.calls == 1
    asked = cloud.seen[0].body
    assert asked["messages"] == [*COUNTING, {"role": "assistant", "content": edge_text}]
    assert asked["continue_final_message"] is True
    assert asked["model"] == CLOUD_MODEL
    assert asked["max_tokens"] == MAX_TOKENS - switch  # what the edge left of the budget


def assert_reaped_and_log_kept(node: EdgeNodeProcess) -> None:
    assert "serving" in node.log_path.read_text(errors="replace")
    with pytest.raises(ProcessLookupError):
        os.kill(node.pid, 0)  # reaped: not even a zombie is left


async def test_killed_mid_stream_the_cloud_finishes_and_the_circuit_opens(
    edge: EdgeProcess, make_gateway: GatewayFactory, upstreams: StartUpstream
) -> None:
    """The circuit breaker takes the dead node out (health checks kept out of the way)."""
    process, node = edge
    # One health round at start-up only: what happens to the node here is the breaker's doing.
    gateway, cloud = await gateway_over(make_gateway, upstreams, node, health_interval_s=60)

    out = await stream_and_kill(gateway, process)
    assert_finished_by_the_cloud(out, node, cloud)
    assert await edge_attempts(gateway) == {"ok": 1, "stream_cut": 1}  # failure 1 of 2

    # The next edge-bound request tries the dead node, is refused, and gets the cloud.
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="edge", messages=HI, max_tokens=8
        )
    assert raw.headers["x-gateway-route-reason"] == "pinned by model edge"
    assert raw.headers["x-gateway-tier"] == "cloud"
    assert raw.headers["x-gateway-node"] == "cloud-1"
    assert raw.headers["x-gateway-fallback"] == "edge-1:connect_error"
    assert raw.parse().model == CLOUD_MODEL
    assert cloud.calls == 2

    # That was failure 2 of failure_threshold 2: the circuit is open. The health checks
    # have not run since start-up, so they still say healthy: it is the breaker's verdict.
    status = await eventually_value(
        lambda: edge_status(gateway), lambda s: s["circuit"] == "open", 5
    )
    assert status == {"node": "edge-1", "healthy": True, "circuit": "open"}
    assert await edge_gauge(gateway, "gateway_node_circuit_state") == 2  # open

    # Now an edge-bound request goes straight to the cloud: no attempt, the skip named.
    before = await edge_attempts(gateway)
    assert before == {"ok": 1, "stream_cut": 1, "connect_error": 1}
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="edge", messages=HI, max_tokens=8
        )
    assert raw.headers["x-gateway-tier"] == "cloud"
    # Not asked again (its circuit is open), but named: the move to the cloud is visible.
    assert raw.headers["x-gateway-fallback"] == "edge-1:circuit_open"
    assert await edge_attempts(gateway) == before
    assert cloud.calls == 3

    metrics = await scrape_metrics(gateway)
    continued = {"from_tier": "edge", "to_tier": "cloud", "form": "prefill", "result": "ok"}
    assert metrics.value("gateway_continuations_total", **continued) == 1
    fell_back = {"from_tier": "edge", "to_tier": "cloud", "reason": "connect_error"}
    assert metrics.value("gateway_fallbacks_total", **fell_back) == 1

    assert_reaped_and_log_kept(node)


async def test_killed_mid_stream_the_health_checks_take_the_node_out(
    edge: EdgeProcess, make_gateway: GatewayFactory, upstreams: StartUpstream
) -> None:
    """The health checks take the dead node out before the breaker sees a second failure."""
    process, node = edge
    gateway, cloud = await gateway_over(make_gateway, upstreams, node, health_interval_s=0.2)

    out = await stream_and_kill(gateway, process)
    assert_finished_by_the_cloud(out, node, cloud)

    # Two failed checks in a row mark it down; the cut stream alone did not open the circuit.
    status = await eventually_value(
        lambda: edge_status(gateway), lambda s: s["healthy"] is False, 10
    )
    assert status == {"node": "edge-1", "healthy": False, "circuit": "closed"}
    assert await edge_gauge(gateway, "gateway_node_up") == 0

    before = await edge_attempts(gateway)
    assert before == {"ok": 1, "stream_cut": 1}
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto",
            messages=HI,
            max_tokens=8,
            extra_headers={"x-gateway-tier": "edge"},
        )
    assert raw.headers["x-gateway-route-reason"] == "pinned by header x-gateway-tier: edge"
    assert raw.headers["x-gateway-tier"] == "cloud"
    assert raw.parse().model == CLOUD_MODEL
    # No attempt on the dead node, but the skip is named.
    assert raw.headers["x-gateway-fallback"] == "edge-1:unhealthy"
    assert await edge_attempts(gateway) == before
    assert cloud.calls == 2

    assert_reaped_and_log_kept(node)
