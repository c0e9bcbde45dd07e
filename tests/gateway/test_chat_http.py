"""The gateway end to end against scripted upstreams, with the official openai SDK."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

import gateway as gateway_package
from tests.conftest import TwoTiers, TwoTiersFactory
from tests.helpers import eventually_value, policy_yaml, scrape_metrics, sdk

SIMPLE = [{"role": "user", "content": "hi"}]
HARD = [{"role": "user", "content": "Prove step by step that the integral of 2x is x^2 = C"}]


@pytest.fixture
async def two_tiers(two_tiers: TwoTiersFactory) -> TwoTiers:
    """This module's setup, started: a low cloud threshold, health checks on."""
    return await two_tiers(cloud_above=0.3, health_checks=True)


async def test_non_streaming_simple_request_goes_to_the_edge(two_tiers) -> None:
    edge, cloud, gateway = two_tiers
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=SIMPLE)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the upstream."
    assert completion.model == "edge-model"
    assert raw.headers["x-gateway-tier"] == "edge"
    assert raw.headers["x-gateway-node"] == "edge-1"
    assert raw.headers["x-gateway-route-reason"].startswith("score ")
    assert len(raw.headers["x-request-id"]) >= 16
    assert (edge.calls, cloud.calls) == (1, 0)
    # The node was asked for its own model, not for "auto".
    assert edge.seen[0].body["model"] == "edge-model"


async def test_hard_request_goes_to_the_cloud(two_tiers) -> None:
    edge, cloud, gateway = two_tiers
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=HARD)
    assert raw.parse().model == "cloud-model"
    assert raw.headers["x-gateway-tier"] == "cloud"
    assert "math" in raw.headers["x-gateway-route-reason"]
    assert (edge.calls, cloud.calls) == (0, 1)


async def test_streaming_relays_chunks_and_hides_usage_unless_asked(two_tiers) -> None:
    edge, _, gateway = two_tiers
    async with sdk(gateway) as client:
        stream = await client.chat.completions.create(model="auto", messages=SIMPLE, stream=True)
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the upstream."
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    # The gateway asked the upstream for usage anyway, for its own accounting.
    assert edge.seen[0].body["stream_options"] == {"include_usage": True}


async def test_streaming_include_usage_is_honoured(two_tiers) -> None:
    _, _, gateway = two_tiers
    async with sdk(gateway) as client:
        stream = await client.chat.completions.create(
            model="auto", messages=SIMPLE, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


async def test_stream_is_relayed_as_it_arrives_not_buffered(upstreams, make_gateway) -> None:
    edge = await upstreams("edge-model")
    edge.script.chunk_delay_s = 0.3  # five chunks 0.3 s apart: 1.5 s from first to last
    gateway = await make_gateway(policy_yaml([(edge.url, "edge-model")], []))
    loop = asyncio.get_running_loop()
    arrivals: list[tuple[float, bytes]] = []  # (seconds since the request, data line)
    # The clock starts before the request: the headers go out only once the first chunk is
    # in, so a clock started at the headers would not see an answer held back until then.
    started = loop.time()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "auto", "messages": SIMPLE, "stream": True},
        ) as response,
    ):
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for line in response.content:
            if line.startswith(b"data: "):
                arrivals.append((loop.time() - started, line.rstrip()))
    assert len(arrivals) == 7  # five with text, the finish reason, [DONE]
    assert arrivals[-1][1] == b"data: [DONE]"
    (first_at, _), (last_at, _) = arrivals[0], arrivals[-1]
    # Relayed as it comes, the answer reaches the client as spread out as the upstream
    # wrote it; a gateway that buffered it would hand it over all at once.
    assert last_at - first_at > 1.0, arrivals


async def test_unknown_fields_pass_through_untouched(two_tiers) -> None:
    _, cloud, gateway = two_tiers
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + "/v1/chat/completions",
            json={
                "model": "auto",
                "messages": SIMPLE,
                "logit_bias": {"50256": -100},
                "vendor_knob": [1, 2],
            },
        ) as response,
    ):
        assert response.status == 200
    # logit_bias needs a node that applies it: the cloud tier's (vLLM's) default capabilities.
    assert cloud.seen[0].body["logit_bias"] == {"50256": -100}
    assert cloud.seen[0].body["vendor_knob"] == [1, 2]


async def test_pins(two_tiers) -> None:
    edge, cloud, gateway = two_tiers
    async with sdk(gateway) as client:
        by_model = await client.chat.completions.with_raw_response.create(
            model="cloud", messages=SIMPLE
        )
        by_name = await client.chat.completions.with_raw_response.create(
            model="edge-model", messages=HARD
        )
        by_header = await client.chat.completions.with_raw_response.create(
            model="auto", messages=HARD, extra_headers={"x-gateway-tier": "edge"}
        )
    assert by_model.headers["x-gateway-tier"] == "cloud"
    assert by_model.headers["x-gateway-route-reason"] == "pinned by model cloud"
    assert by_name.headers["x-gateway-tier"] == "edge"
    assert by_header.headers["x-gateway-tier"] == "edge"
    assert by_header.headers["x-gateway-route-reason"].startswith("pinned by header")
    assert (edge.calls, cloud.calls) == (2, 1)


async def test_models_lists_auto_tiers_and_served_models(two_tiers) -> None:
    _, _, gateway = two_tiers
    async with sdk(gateway) as client:
        models = await client.models.list()
    assert [m.id for m in models.data] == ["auto", "edge", "cloud", "cloud-model", "edge-model"]


async def test_health_ready_and_metrics(two_tiers) -> None:
    _, _, gateway = two_tiers
    async with sdk(gateway) as client:
        await client.chat.completions.create(model="auto", messages=SIMPLE)
        await client.chat.completions.create(model="auto", messages=HARD)
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url + "/healthz") as response:
            assert response.status == 200
    # The first health round runs right after start-up.
    _, ready = await eventually_value(
        lambda: _readyz(gateway), lambda answer: answer[0] == 200, what="ready"
    )
    assert ready["status"] == "ready"
    metrics = await scrape_metrics(gateway)
    assert metrics.value("gateway_requests_total", tier="edge", outcome="ok") == 1
    assert metrics.value("gateway_requests_total", tier="cloud", outcome="ok") == 1
    assert metrics.value("gateway_route_decisions_total", tier="cloud", reason="score") == 1
    # Non-streaming requests are streamed internally: the scripted stream counts 5 tokens.
    assert metrics.value("gateway_tokens_total", tier="edge", direction="completion") == 5
    assert metrics.value("gateway_node_up", tier="cloud", node="cloud-1") == 1


async def _readyz(gateway) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(gateway.url + "/readyz") as r:
        return r.status, await r.json()


async def test_readyz_is_503_when_no_node_is_healthy(upstreams, make_gateway) -> None:
    edge = await upstreams("edge-model")
    edge.health_status = 503
    gateway = await make_gateway(policy_yaml([(edge.url, "edge-model")], []))
    # Its one node is marked down after failure_threshold (2) health rounds.
    status, _ = await eventually_value(
        lambda: _readyz(gateway),
        lambda answer: answer[1]["tiers"]["edge"][0]["healthy"] is False,
        what="the node marked down",
    )
    assert status == 503


async def test_api_keys_are_enforced_when_configured(upstreams, make_gateway) -> None:
    edge = await upstreams("edge-model")
    gateway = await make_gateway(
        policy_yaml([(edge.url, "edge-model")], []), api_keys=frozenset({"sekrit"})
    )
    async with sdk(gateway, api_key="wrong") as c:
        with pytest.raises(openai.AuthenticationError) as info:
            await c.chat.completions.create(model="auto", messages=SIMPLE)
    assert info.value.body["code"] == "invalid_api_key"
    async with sdk(gateway, api_key="sekrit") as c:
        done = await c.chat.completions.create(model="auto", messages=SIMPLE)
    assert done.choices[0].message.content
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url + "/healthz") as response:
            assert response.status == 200  # probes need no key
    assert json.loads(json.dumps(edge.seen[0].body))["model"] == "edge-model"


async def test_a_cookie_a_node_sets_is_not_sent_on_later_requests(upstreams, make_gateway) -> None:
    """The nodes serve every client through one pooled session: a cookie one answer set
    (a load balancer's affinity cookie, say) must not ride along on other clients'
    requests. The node is named by host name: aiohttp keeps no cookies for IP addresses."""
    edge, cloud = await upstreams("edge-model"), await upstreams("cloud-model")
    edge.script.set_cookie = "affinity=node-a; Path=/"
    by_name = edge.url.replace("127.0.0.1", "localhost")
    gateway = await make_gateway(
        policy_yaml([(by_name, "edge-model")], [(cloud.url, "cloud-model")]), health_checks=False
    )
    async with sdk(gateway) as client:
        for stream in (False, True, False):
            answer = await client.chat.completions.create(
                model="auto", messages=SIMPLE, stream=stream
            )
            if stream:
                [chunk async for chunk in answer]  # type: ignore[union-attr]
    assert edge.calls == 3
    assert [seen.headers.get("Cookie") for seen in edge.seen] == [None, None, None]


@pytest.mark.parametrize("compress", ["if_accepted", "always"])
@pytest.mark.parametrize("stream_internally", [True, False])
async def test_a_node_that_compresses_its_answers_is_read(
    upstreams, make_gateway, compress: str, stream_internally: bool
) -> None:
    """The gateway asks for plain bodies (it parses every answer, and compressing a
    token stream on a local network costs both ends CPU for nothing), so a node with
    compression on sends them plain; one that compresses all the same is decompressed."""
    edge, cloud = await upstreams("edge-model"), await upstreams("cloud-model")
    edge.script.compress = compress  # type: ignore[assignment]
    policy = policy_yaml(
        [(edge.url, "edge-model")],
        [(cloud.url, "cloud-model")],
        fallback={"stream_internally": stream_internally},
    )
    gateway = await make_gateway(policy, health_checks=False)
    async with sdk(gateway) as client:
        whole = await client.chat.completions.create(model="auto", messages=SIMPLE)
        stream = await client.chat.completions.create(model="auto", messages=SIMPLE, stream=True)
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert whole.choices[0].message.content == streamed == "Hello from the upstream."
    assert whole.model == "edge-model"
    assert [seen.headers.get("Accept-Encoding") for seen in edge.seen] == ["identity"] * 2


async def test_a_request_looks_the_event_loop_up_nowhere_in_the_gateway(
    two_tiers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Python 3.11 each look-up of the running loop is a getpid() system call
    (gateway/upstream/loop_timeout.py): the way to a node uses the loop it was given."""
    edge, _cloud, gateway = two_tiers
    package = str(Path(gateway_package.__file__).parent)
    callers: list[str] = []

    def counted(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def look_up(*args: Any, **kwargs: Any) -> Any:
            caller = sys._getframe(1).f_code
            given_loop = name == "current_task" and (args or kwargs)  # no look-up then
            if caller.co_filename.startswith(package) and not given_loop:
                callers.append(f"{name} from {caller.co_filename}:{caller.co_name}")
            return real(*args, **kwargs)

        return look_up

    for name in ("get_running_loop", "get_event_loop", "current_task", "timeout", "timeout_at"):
        monkeypatch.setattr(asyncio, name, counted(name, getattr(asyncio, name)))
    async with sdk(gateway) as client:
        await client.chat.completions.create(model="auto", messages=SIMPLE)
        stream = await client.chat.completions.create(model="auto", messages=SIMPLE, stream=True)
        assert [c async for c in stream]
    monkeypatch.undo()
    assert edge.calls == 2
    assert callers == []
