"""Shadow sampling against the real edge model (SmolLM2 through llama.cpp, a
``python -m edge_node`` subprocess) and a scripted, slow cloud, storing in a real Redis:

- the client's latency is unchanged: each client has its whole answer while its shadow is
  still waiting on the cloud, and requests to a gateway that shadows every answer take as
  long as requests, alternated with them, to a gateway over the same node that shadows none;
- the sample rate is honoured: the cloud is asked about exactly the request ids the hash
  picks, and the counters agree;
- stored records are complete: messages, both answers with tiers, nodes, models, usage,
  ids and times;
- the store's cap holds: the stream keeps the newest ``max_records``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.shadow.sampling import sampled
from gateway.state import SHADOW
from tests.conftest import GatewayFactory, RunningGateway
from tests.fixtures.edge import EdgeNodeProcess
from tests.fixtures.redis import RedisServer
from tests.gateway.shadow.conftest import stream_records
from tests.helpers import chat, eventually_value, policy_yaml, scrape_metrics
from tests.scripted import Script, ScriptedUpstream

pytestmark = [pytest.mark.edge_model, pytest.mark.redis]

CLOUD_DELAY_S = 3.0
CLOUD_CHUNKS = ("A", " careful", " cloud", " answer.")
TIMEOUTS = {"connect": 2, "first_token": 60, "idle": 60, "total": 120}
Upstreams = Callable[[str], Awaitable[ScriptedUpstream]]


async def gateway(
    make_gateway: GatewayFactory,
    edge: EdgeNodeProcess,
    cloud: ScriptedUpstream,
    redis: RedisServer,
    **shadow: Any,
) -> RunningGateway:
    sections: dict[str, Any] = (
        {"shadow": {"store": {"kind": "redis"}, "timeout_s": 60, **shadow}} if shadow else {}
    )
    text = policy_yaml(
        [(edge.url, edge.model)], [(cloud.url, "cloud-model")], timeouts=TIMEOUTS, **sections
    )
    return await make_gateway(text, health_checks=False, redis_url=redis.url)


async def stored(gateway: RunningGateway, count: int, timeout_s: float = 30) -> None:
    async def probe() -> float:
        return (await scrape_metrics(gateway)).get("gateway_shadow_stored_total")

    await eventually_value(probe, lambda n: n >= count, timeout_s, f"{count} record(s) stored")


async def test_latency_unchanged_and_records_complete(
    edge_node: EdgeNodeProcess,
    upstreams: Upstreams,
    make_gateway: GatewayFactory,
    redis_server: RedisServer,
) -> None:
    cloud = await upstreams("cloud-model")
    cloud.script = Script(chunks=CLOUD_CHUNKS, first_token_delay_s=CLOUD_DELAY_S)
    shadowing = await gateway(
        make_gateway, edge_node, cloud, redis_server, sample_rate=1.0, max_concurrency=10
    )
    plain = await gateway(make_gateway, edge_node, cloud, redis_server)
    timings: dict[str, list[float]] = {"shadowing": [], "plain": []}
    asked: list[tuple[str, list[dict[str, str]], str, bool]] = []
    for turn in range(6):
        # Alternated, so a slower moment of a shared machine falls on both alike.
        target, name = (shadowing, "shadowing") if turn % 2 else (plain, "plain")
        stream = turn % 4 >= 2
        messages = [{"role": "user", "content": f"Name a colour. ({turn})"}]
        started = time.perf_counter()
        reply = await chat(
            target,
            stream=stream,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=8,
            temperature=0,
            extra_headers={"x-request-id": f"req-{turn}"},
        )
        timings[name].append(time.perf_counter() - started)
        assert reply.headers["x-gateway-tier"] == "edge" and reply.model == edge_node.model
        if target is shadowing:
            asked.append((f"req-{turn}", messages, reply.text, stream))
            # The client has its whole answer; its shadow waits on the cloud for seconds more.
            assert shadowing.app[SHADOW].in_flight >= 1
    assert max(timings["shadowing"]) < CLOUD_DELAY_S
    assert statistics.median(timings["shadowing"]) < statistics.median(timings["plain"]) + 0.5
    assert (await scrape_metrics(plain)).get("gateway_shadow_eligible_total") == 0

    await stored(shadowing, 3)
    records = {r["id"]: r for r in await stream_records(redis_server.url)}
    assert sorted(records) == [request_id for request_id, *_ in asked]
    for request_id, messages, text, _stream in asked:
        record = records[request_id]
        assert record["version"] == 1
        assert record["messages"] == messages and record["max_tokens"] == 8
        assert record["route"]["tier"] == "edge"
        edge, cloud_side = record["edge"], record["cloud"]
        assert edge["content"] == text and text
        assert (edge["tier"], edge["node"], edge["model"]) == ("edge", "edge-1", edge_node.model)
        assert cloud_side["content"] == "A careful cloud answer."
        assert (cloud_side["tier"], cloud_side["node"], cloud_side["model"]) == (
            "cloud",
            "cloud-1",
            "cloud-model",
        )
        for side in (edge, cloud_side):
            usage = side["usage"]
            assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
            assert isinstance(side["response_id"], str) and side["finish_reason"]
        assert cloud_side["duration_s"] >= CLOUD_DELAY_S
        assert record["shadowed_at"] - record["answered_at"] >= CLOUD_DELAY_S - 0.1


async def test_sample_rate_honoured_and_store_capped(
    edge_node: EdgeNodeProcess,
    upstreams: Upstreams,
    make_gateway: GatewayFactory,
    redis_server: RedisServer,
) -> None:
    cloud = await upstreams("cloud-model")
    cloud.script = Script(chunks=CLOUD_CHUNKS, first_token_delay_s=0.2)
    target = await gateway(
        make_gateway, edge_node, cloud, redis_server,
        sample_rate=0.5, max_concurrency=50, store={"kind": "redis", "max_records": 4},
    )  # fmt: skip
    ids = [f"sample-{n}" for n in range(16)]
    expected = [i for i in ids if sampled(i, 0.5)]
    assert 4 < len(expected) < len(ids)  # these ids make a real test of both
    for request_id in ids:
        await chat(target, max_tokens=2, temperature=0, extra_headers={"x-request-id": request_id})
    await stored(target, len(expected))
    page = await scrape_metrics(target)
    assert page.get("gateway_shadow_eligible_total") == len(ids)
    assert page.get("gateway_shadow_sampled_total") == len(expected)
    assert page.get("gateway_shadow_stored_total") == len(expected)
    seen = sorted({k.lower(): v for k, v in s.headers.items()}["x-request-id"] for s in cloud.seen)
    assert seen == sorted(expected)  # the cloud was asked about exactly the sampled ids
    held = [r["id"] for r in await stream_records(redis_server.url)]
    assert len(held) == 4 and set(held) <= set(expected)  # the cap: the newest 4 records
