"""Shadowing through the real gateway app, over scripted tiers and a real Redis: what is
offered, what is skipped and why, what fails without touching the client, and what a
stored record holds. (Against the real edge model: ``test_shadow_edge.py``.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.policy.shadow import JsonlStoreSpec
from gateway.shadow.jsonl_store import JsonlShadowStore
from gateway.state import SHADOW
from tests.conftest import RunningGateway, TwoTiers, TwoTiersFactory
from tests.fixtures.redis import RedisServer
from tests.gateway.shadow.conftest import stream_records
from tests.helpers import Metrics, chat, eventually, eventually_value, scrape_metrics, sdk
from tests.scripted import Script

pytestmark = pytest.mark.redis

CLOUD_CHUNKS = ("The", " cloud", " answer.")
EDGE_CHUNKS = ("The", " edge", " answer.")


def shadow(**options: Any) -> dict[str, Any]:
    """A shadow section: every edge answer sampled, a Redis store, unless overridden."""
    return {"sample_rate": 1.0, "store": {"kind": "redis"}, **options}


async def start(
    two_tiers: TwoTiersFactory, redis: RedisServer | None, *, section: Mapping[str, Any] | None,
    **policy: Any,
) -> TwoTiers:  # fmt: skip
    settings = {"redis_url": redis.url} if redis is not None else {}
    sections = {"shadow": section} if section is not None else {}
    tiers = await two_tiers(settings=settings, **sections, **policy)
    tiers.edge.script = Script(chunks=EDGE_CHUNKS)
    tiers.cloud.script = Script(chunks=CLOUD_CHUNKS)
    return tiers


async def metric(gateway: RunningGateway, name: str, **labels: str) -> float:
    page: Metrics = await scrape_metrics(gateway)
    return page.get(name, **labels)


async def stored(gateway: RunningGateway, count: int) -> None:
    async def probe() -> float:
        return await metric(gateway, "gateway_shadow_stored_total")

    await eventually_value(probe, lambda n: n >= count, what=f"{count} record(s) stored")


async def test_a_sampled_edge_answer_is_stored_with_the_clouds_answer(
    two_tiers: TwoTiersFactory, redis_server: RedisServer
) -> None:
    tiers = await start(two_tiers, redis_server, section=shadow())
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    reply = await chat(
        tiers.gateway,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=40,
        extra_headers={"x-request-id": "req-a1"},
    )
    assert reply.headers["x-gateway-tier"] == "edge" and reply.text == "The edge answer."
    await stored(tiers.gateway, 1)
    (record,) = await stream_records(redis_server.url)
    assert record["id"] == "req-a1"
    assert record["messages"] == messages
    assert record["max_tokens"] == 40
    assert record["route"]["tier"] == "edge" and record["route"]["reason_kind"] == "score"
    edge, cloud = record["edge"], record["cloud"]
    assert (edge["tier"], edge["node"], edge["model"]) == ("edge", "edge-1", "edge-model")
    assert (cloud["tier"], cloud["node"], cloud["model"]) == ("cloud", "cloud-1", "cloud-model")
    assert (edge["content"], cloud["content"]) == ("The edge answer.", "The cloud answer.")
    assert edge["finish_reason"] == cloud["finish_reason"] == "stop"
    for side in (edge, cloud):
        assert side["usage"]["completion_tokens"] == 3 and side["usage"]["prompt_tokens"] == 10
        assert side["response_id"] == "chatcmpl-scripted" and side["duration_s"] >= 0
    assert record["answered_at"] <= record["shadowed_at"]
    # The cloud was asked exactly what the edge was, once, not streamed, marked a shadow.
    (asked,) = tiers.cloud.seen
    assert asked.body["messages"] == tiers.edge.seen[0].body["messages"] == messages
    assert asked.body["max_tokens"] == 40 and asked.body["model"] == "cloud-model"
    headers = {name.lower(): value for name, value in asked.headers.items()}
    assert headers["x-gateway-shadow"] == "1" and headers["x-request-id"] == "req-a1"
    assert await metric(tiers.gateway, "gateway_shadow_tokens_total", direction="completion") == 3


async def test_a_streamed_answer_is_shadowed_after_it_was_served(
    two_tiers: TwoTiersFactory, redis_server: RedisServer
) -> None:
    tiers = await start(two_tiers, redis_server, section=shadow())
    reply = await chat(tiers.gateway, stream=True, extra_headers={"x-request-id": "req-s1"})
    assert reply.text == "The edge answer."
    await stored(tiers.gateway, 1)
    (record,) = await stream_records(redis_server.url)
    assert record["id"] == "req-s1"
    assert record["edge"]["content"] == "The edge answer."
    assert record["cloud"]["content"] == "The cloud answer."
    assert record["messages"] == [{"role": "user", "content": "hi"}]
    assert record["edge"]["usage"] is not None and record["cloud"]["usage"] is not None


async def test_off_without_the_section(two_tiers: TwoTiersFactory) -> None:
    tiers = await start(two_tiers, None, section=None)
    await chat(tiers.gateway)
    await chat(tiers.gateway, stream=True)
    # The offer is decided before the handler returns: nothing is left to happen later.
    assert await metric(tiers.gateway, "gateway_shadow_eligible_total") == 0
    assert tiers.gateway.app[SHADOW].in_flight == 0 and tiers.cloud.calls == 0


async def test_answers_of_the_cloud_are_not_offered(
    two_tiers: TwoTiersFactory, redis_server: RedisServer
) -> None:
    tiers = await start(two_tiers, redis_server, section=shadow())
    reply = await chat(tiers.gateway, extra_headers={"x-gateway-tier": "cloud"})
    assert reply.headers["x-gateway-tier"] == "cloud"
    assert await metric(tiers.gateway, "gateway_shadow_eligible_total") == 0
    assert tiers.gateway.app[SHADOW].in_flight == 0 and tiers.cloud.calls == 1


async def test_skipped_at_the_concurrency_bound_and_cancelled_at_shutdown(
    two_tiers: TwoTiersFactory, redis_server: RedisServer
) -> None:
    tiers = await start(
        two_tiers, redis_server, section=shadow(max_concurrency=1, timeout_s=60),
        timeouts={"connect": 1, "first_token": 60, "idle": 60, "total": 60},
    )  # fmt: skip
    tiers.cloud.script = Script(behaviour="hang")
    await chat(tiers.gateway)
    await eventually(lambda: tiers.cloud.in_flight == 1, what="the first shadow at the cloud")
    await chat(tiers.gateway)
    await chat(tiers.gateway, stream=True)
    assert await metric(tiers.gateway, "gateway_shadow_sampled_total") == 3
    assert await metric(tiers.gateway, "gateway_shadow_skipped_total", reason="concurrency") == 2
    assert await metric(tiers.gateway, "gateway_shadow_in_flight") == 1
    assert tiers.cloud.calls == 1
    # Stopping the gateway cancels the shadow under way: the cloud sees the call go.
    await tiers.gateway.server.close()
    await eventually(lambda: tiers.cloud.seen[0].disconnected_at is not None)


async def test_skipped_while_the_cloud_is_unhealthy(
    two_tiers: TwoTiersFactory, redis_server: RedisServer
) -> None:
    tiers = await start(two_tiers, redis_server, section=shadow(), health_checks=True)
    tiers.cloud.health_status = 503

    async def cloud_up() -> float:
        return await metric(tiers.gateway, "gateway_node_up", tier="cloud", node="cloud-1")

    await eventually_value(cloud_up, lambda up: up == 0, what="the cloud marked down")
    await chat(tiers.gateway)
    skipped = await metric(
        tiers.gateway, "gateway_shadow_skipped_total", reason="cloud_unavailable"
    )
    assert skipped == 1
    assert tiers.gateway.app[SHADOW].in_flight == 0 and tiers.cloud.calls == 0


async def test_skipped_while_the_cloud_is_busy_with_clients(
    two_tiers: TwoTiersFactory, redis_server: RedisServer
) -> None:
    tiers = await start(
        two_tiers, redis_server, section=shadow(cloud_busy_above=0.4),
        tiers={"cloud": {"max_concurrency_per_node": 2}},
        timeouts={"connect": 1, "first_token": 30, "idle": 30, "total": 30},
    )  # fmt: skip
    tiers.cloud.queue = [Script(first_token_delay_s=30)]  # a client's request, in progress
    pinned = asyncio.create_task(chat(tiers.gateway, extra_headers={"x-gateway-tier": "cloud"}))
    try:
        await eventually(lambda: tiers.cloud.in_flight == 1, what="a client at the cloud")
        await chat(tiers.gateway)  # busyness 1/2 = 0.5 > 0.4
        assert await metric(tiers.gateway, "gateway_shadow_skipped_total", reason="cloud_busy") == 1
        assert tiers.cloud.calls == 1
    finally:
        pinned.cancel()
        await asyncio.gather(pinned, return_exceptions=True)


async def test_a_failing_cloud_fails_the_shadow_only_and_never_falls_back_to_the_edge(
    two_tiers: TwoTiersFactory, redis_server: RedisServer
) -> None:
    tiers = await start(two_tiers, redis_server, section=shadow())
    tiers.cloud.script = Script(behaviour="status", status=500)
    reply = await chat(tiers.gateway)
    assert reply.text == "The edge answer."

    async def failed() -> float:
        return await metric(tiers.gateway, "gateway_shadow_failed_total", stage="cloud")

    await eventually_value(failed, lambda n: n == 1, what="the shadow counted as failed")
    assert tiers.edge.calls == 1  # the client's request only: the shadow stayed on the cloud
    assert tiers.cloud.calls >= 1 and await stream_records(redis_server.url) == []


async def test_a_store_that_is_down_fails_the_shadow_only(
    two_tiers: TwoTiersFactory, redis_server: RedisServer
) -> None:
    tiers = await start(two_tiers, redis_server, section=shadow())
    redis_server.stop()
    reply = await chat(tiers.gateway)
    assert reply.text == "The edge answer."

    async def failed() -> float:
        return await metric(tiers.gateway, "gateway_shadow_failed_total", stage="store")

    await eventually_value(failed, lambda n: n == 1, what="the shadow counted as failed")
    assert await metric(tiers.gateway, "gateway_shadow_stored_total") == 0


async def test_redis_store_without_redis_url_is_skipped_and_said(
    two_tiers: TwoTiersFactory, caplog: pytest.LogCaptureFixture
) -> None:
    tiers = await start(two_tiers, None, section=shadow())
    assert "REDIS_URL is not set" in caplog.text  # said at start-up
    await chat(tiers.gateway)
    assert await metric(tiers.gateway, "gateway_shadow_skipped_total", reason="no_store") == 1
    assert tiers.cloud.calls == 0


async def test_a_jsonl_store_through_the_gateway_keeps_its_caps(
    two_tiers: TwoTiersFactory, tmp_path: Path
) -> None:
    store = {"kind": "jsonl", "dir": str(tmp_path / "shadow"), "max_file_bytes": 2048,
             "max_files": 2}  # fmt: skip
    tiers = await start(two_tiers, None, section=shadow(max_concurrency=100, store=store))
    async with sdk(tiers.gateway) as client:
        for number in range(12):
            await client.chat.completions.create(
                model="auto",
                messages=[{"role": "user", "content": f"question {number}"}],
                extra_headers={"x-request-id": f"req-{number:02d}"},
            )
    await stored(tiers.gateway, 12)
    reader = JsonlShadowStore(JsonlStoreSpec(dir=tmp_path / "shadow"))
    assert len(reader.files()) == 2  # older files deleted
    held = [json.loads(line.data) async for line in reader.read()]
    assert 0 < len(held) < 12
    assert sorted(r["id"] for r in held) == [f"req-{n:02d}" for n in range(12 - len(held), 12)]


async def test_a_reloaded_policy_turns_shadowing_on(
    two_tiers: TwoTiersFactory, redis_server: RedisServer
) -> None:
    tiers = await start(two_tiers, redis_server, section=None)
    await chat(tiers.gateway)
    text = tiers.gateway.policy_path.read_text()
    tiers.gateway.policy_path.write_text(
        text + "shadow:\n  sample_rate: 1.0\n  store: {kind: redis, key: 'later'}\n"
    )

    async def shadowed() -> float:
        await chat(tiers.gateway)
        return await metric(tiers.gateway, "gateway_shadow_sampled_total")

    await eventually_value(shadowed, lambda n: n >= 1, what="the reload adopted")
    await stored(tiers.gateway, 1)
    assert len(await stream_records(redis_server.url, "later")) >= 1


async def test_the_client_has_its_answer_while_the_shadow_is_still_at_the_cloud(
    two_tiers: TwoTiersFactory, redis_server: RedisServer
) -> None:
    tiers = await start(
        two_tiers, redis_server, section=shadow(),
        timeouts={"connect": 1, "first_token": 30, "idle": 30, "total": 30},
    )  # fmt: skip
    tiers.cloud.script = Script(chunks=CLOUD_CHUNKS, first_token_delay_s=3.0)
    shadowing = tiers.gateway.app[SHADOW]
    for served, stream in enumerate((False, True), start=1):
        reply = await chat(tiers.gateway, stream=stream)
        assert reply.text == "The edge answer."
        assert shadowing.in_flight == served  # the shadows run on while the client has it all
    assert await metric(tiers.gateway, "gateway_shadow_stored_total") == 0
    await stored(tiers.gateway, 2)


async def test_with_a_session_the_conversation_as_the_edge_was_sent_it_is_stored(
    two_tiers: TwoTiersFactory, redis_server: RedisServer
) -> None:
    tiers = await start(two_tiers, redis_server, section=shadow())
    session = {"x-session-id": "chat-1"}
    async with sdk(tiers.gateway) as client:
        for number, question in enumerate(["hi", "and then?"]):
            await client.chat.completions.create(
                model="auto",
                messages=[{"role": "user", "content": question}],
                extra_headers={**session, "x-request-id": f"turn-{number}"},
            )
    await stored(tiers.gateway, 2)
    records = {r["id"]: r for r in await stream_records(redis_server.url)}
    assert records["turn-1"]["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "The edge answer."},
        {"role": "user", "content": "and then?"},
    ]
    # Both tiers were asked the same thing: the edge by the client's request, the cloud by
    # the shadow (whose answer is not part of the session).
    second_to_cloud = next(
        s
        for s in tiers.cloud.seen
        if {k.lower(): v for k, v in s.headers.items()}["x-request-id"] == "turn-1"
    )
    assert second_to_cloud.body["messages"] == tiers.edge.seen[1].body["messages"]
    assert second_to_cloud.body["messages"] == records["turn-1"]["messages"]


async def test_answers_fetched_without_internal_streaming_are_stored_whole(
    two_tiers: TwoTiersFactory, redis_server: RedisServer
) -> None:
    tiers = await start(
        two_tiers, redis_server, section=shadow(), fallback={"stream_internally": False}
    )
    await chat(tiers.gateway, extra_headers={"x-request-id": "plain-1"})
    await stored(tiers.gateway, 1)
    (record,) = await stream_records(redis_server.url)
    assert record["edge"]["content"] == "The edge answer."
    assert record["cloud"]["content"] == "The cloud answer."
    assert record["edge"]["finish_reason"] == record["cloud"]["finish_reason"] == "stop"
    assert record["cloud"]["usage"]["total_tokens"] > 0
    assert "stream" not in tiers.cloud.seen[0].body  # asked for one whole answer
