"""Shadowing and API keys: an answer served to a key the cloud is closed to (a free plan,
edge only) is never re-asked on the cloud, since its prompt may not go there; a key that
may use both tiers is shadowed as usual, in the same gateway and the same run."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.accounts.store import KeyStore
from gateway.state import SHADOW
from tests.conftest import RunningGateway, TwoTiersFactory
from tests.fixtures.redis import RedisServer
from tests.gateway.shadow.conftest import stream_records
from tests.helpers import HI, eventually, sdk
from tests.scripted import Script

pytestmark = pytest.mark.redis

SHADOW_SECTION = {"sample_rate": 1.0, "max_concurrency": 8, "store": {"kind": "redis"}}


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def ask(gateway: RunningGateway, key: str, request_id: str, *, stream: bool) -> str:
    """One request with ``key`` and ``request_id``, read to its end: the tier that answered."""
    async with sdk(gateway, api_key=key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=HI, stream=stream, extra_headers={"x-request-id": request_id}
        )
        answer = raw.parse()
        if stream:
            _ = [chunk async for chunk in answer]  # type: ignore[union-attr]
    return raw.headers["x-gateway-tier"]


async def test_an_edge_only_key_is_never_shadowed_to_the_cloud(
    two_tiers: TwoTiersFactory, redis_server: RedisServer, redis: aioredis.Redis
) -> None:
    tiers = await two_tiers(
        settings={"redis_url": redis_server.url, "key_store": True}, shadow=SHADOW_SECTION
    )
    tiers.edge.script = Script(chunks=("The", " edge", " answer."))
    tiers.cloud.script = Script(chunks=("The", " cloud", " answer."))
    store = KeyStore(redis)
    _, free = await store.create(name="free", tiers=["edge"])
    _, paid = await store.create(name="paid")

    # The edge-only key's answers first: were they offered, their shadows would be on their
    # way before the other key's.
    for request_id, stream in (("free-1", False), ("free-2", True)):
        assert await ask(tiers.gateway, free, request_id, stream=stream) == "edge"
    for request_id, stream in (("paid-1", False), ("paid-2", True)):
        assert await ask(tiers.gateway, paid, request_id, stream=stream) == "edge"

    def shadowed() -> set[str]:
        return {
            {k.lower(): v for k, v in seen.headers.items()}.get("x-request-id", "")
            for seen in tiers.cloud.seen
        }

    await eventually(lambda: {"paid-1", "paid-2"} <= shadowed(), what="the paid key's shadows")
    # Each shadow task ends once its record is stored.
    await eventually(lambda: tiers.gateway.app[SHADOW].in_flight == 0, what="shadows done")
    assert shadowed() == {"paid-1", "paid-2"}  # never free-1 or free-2
    assert tiers.cloud.calls == 2
    assert all(
        {k.lower(): v for k, v in seen.headers.items()}.get("x-gateway-shadow") == "1"
        for seen in tiers.cloud.seen
    )
    records = await stream_records(redis_server.url)
    assert sorted(record["id"] for record in records) == ["paid-1", "paid-2"]
    skipped = tiers.gateway.app[SHADOW].metrics.skipped.labels("tier_not_allowed")
    assert skipped._value.get() == 2  # the edge-only key's two, counted by reason
