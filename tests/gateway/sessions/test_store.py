"""SessionStore against a real redis-server: the Lua append, idempotency, TTL, caps,
deletes, deadlines, and cluster safety on a one-node Redis Cluster."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from gateway.sessions.keys import request_key, turns_key
from gateway.sessions.store import SessionStore, StoreUnavailable

pytestmark = pytest.mark.redis

T = 0.5  # per-call deadline for these tests: generous, the machine is shared


def turn(role: str, text: str, request_id: str = "r") -> dict[str, object]:
    return {"role": role, "content": text, "request_id": request_id, "at": time.time()}


def pair(n: int) -> list[dict[str, object]]:
    return [turn("user", f"u{n}", f"r{n}"), turn("assistant", f"a{n}", f"r{n}")]


@pytest.fixture
async def store(redis_server):
    store = SessionStore.from_url(redis_server.url)
    yield store
    await store.aclose()


async def append(store: SessionStore, session: str, request: str, turns, **kw) -> bool:
    options = {"replace": False, "ttl_s": 600, "max_turns": 100, "timeout_s": T, **kw}
    return await store.append(session, request, turns, **options)


def contents(turns) -> list[str]:
    return [str(t["content"]) for t in turns]


async def test_append_then_load_in_order(store) -> None:
    assert await append(store, "s1", "r1", pair(1))
    assert await append(store, "s1", "r2", pair(2))
    assert contents(await store.load("s1", timeout_s=T)) == ["u1", "a1", "u2", "a2"]
    assert await store.load("other", timeout_s=T) == []


async def test_append_is_idempotent_per_request_id(store) -> None:
    assert await append(store, "s1", "r1", pair(1))
    assert not await append(store, "s1", "r1", pair(1))
    assert contents(await store.load("s1", timeout_s=T)) == ["u1", "a1"]
    # The same request id in another session is another request.
    assert await append(store, "s2", "r1", pair(1))


async def test_ttl_is_set_and_refreshed(store, redis_server) -> None:
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        await append(store, "s1", "r1", pair(1), ttl_s=600)
        assert 590 <= await raw.ttl(turns_key("s1")) <= 600
        assert 590 <= await raw.ttl(request_key("s1", "r1")) <= 600
        await raw.expire(turns_key("s1"), 5)
        await append(store, "s1", "r2", pair(2), ttl_s=600)
        assert await raw.ttl(turns_key("s1")) > 5
        snapshot = await store.snapshot("s1", timeout_s=T)
        assert snapshot.ttl_s is not None and 590 <= snapshot.ttl_s <= 600
    finally:
        await raw.aclose()


async def test_a_session_expires_after_its_ttl(store) -> None:
    await append(store, "s1", "r1", pair(1), ttl_s=1)
    deadline = time.monotonic() + 5
    while await store.load("s1", timeout_s=T):
        assert time.monotonic() < deadline, "the session never expired"
        await asyncio.sleep(0.1)
    snapshot = await store.snapshot("s1", timeout_s=T)
    assert snapshot.turns == [] and snapshot.ttl_s is None


async def test_history_is_capped_at_max_turns(store) -> None:
    for n in range(1, 5):
        await append(store, "s1", f"r{n}", pair(n), max_turns=5)
    assert contents(await store.load("s1", timeout_s=T)) == ["a2", "u3", "a3", "u4", "a4"]


async def test_replace_substitutes_the_history(store) -> None:
    await append(store, "s1", "r1", pair(1))
    await append(store, "s1", "r2", [turn("user", "x"), turn("assistant", "y")], replace=True)
    assert contents(await store.load("s1", timeout_s=T)) == ["x", "y"]


async def test_long_replacement_is_pushed_in_batches(store) -> None:
    turns = [turn("user", f"m{i}") for i in range(1234)]
    await append(store, "s1", "r1", turns, replace=True, max_turns=2000)
    assert contents(await store.load("s1", timeout_s=T)) == [f"m{i}" for i in range(1234)]


async def test_delete_removes_turns_and_markers(store, redis_server) -> None:
    await append(store, "s1", "r1", pair(1))
    assert await store.delete("s1", timeout_s=T)
    assert not await store.delete("s1", timeout_s=T)
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await raw.keys("gw:{s1}*") == []
    finally:
        await raw.aclose()
    # With the marker gone, the same request id could be stored again.
    assert await append(store, "s1", "r1", pair(1))


async def test_garbage_in_the_list_is_skipped(store, redis_server) -> None:
    await append(store, "s1", "r1", pair(1))
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        await raw.rpush(turns_key("s1"), b"not json", b'{"no": "role"}')
    finally:
        await raw.aclose()
    assert contents(await store.load("s1", timeout_s=T)) == ["u1", "a1"]


def test_keys_of_a_session_share_one_cluster_slot() -> None:
    slot = key_slot(turns_key("user:42").encode())
    assert key_slot(request_key("user:42", "req-1").encode()) == slot
    assert key_slot(request_key("user:42", "{weird}").encode()) == slot
    assert key_slot(turns_key("user:43").encode()) != slot


async def test_a_stopped_server_is_store_unavailable(redis_server) -> None:
    store = SessionStore.from_url(redis_server.url)
    try:
        await store.ping(timeout_s=T)
        await asyncio.to_thread(redis_server.stop)
        with pytest.raises(StoreUnavailable) as caught:
            await store.load("s1", timeout_s=T)
        assert caught.value.op == "load"
        with pytest.raises(StoreUnavailable):
            await append(store, "s1", "r1", pair(1))
        await asyncio.to_thread(redis_server.start)
        assert await append(store, "s1", "r1", pair(1))
    finally:
        await store.aclose()


async def test_a_frozen_server_misses_the_deadline(redis_server) -> None:
    store = SessionStore.from_url(redis_server.url)
    try:
        await store.ping(timeout_s=T)
        redis_server.pause()  # accepts connections, never answers
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"no answer within 0\.2 s"):
            await store.load("s1", timeout_s=0.2)
        assert time.monotonic() - started < 2.0
    finally:
        redis_server.resume()
        await store.aclose()


async def test_cluster_mode_on_a_one_node_cluster(redis_cluster_node) -> None:
    raw = aioredis.Redis.from_url(redis_cluster_node.url)
    try:
        # The control: this server enforces cluster rules, so the store's success means
        # its keys really are single-slot.
        with pytest.raises(ResponseError, match="same slot"):  # CROSSSLOT
            await raw.delete("gw:{a}:turns", "gw:{b}:turns")
    finally:
        await raw.aclose()
    store = SessionStore.from_url(redis_cluster_node.url, cluster=True)
    try:
        assert await append(store, "s1", "r1", pair(1))
        assert not await append(store, "s1", "r1", pair(1))
        await append(store, "s1", "r2", [turn("user", "x")], replace=True)
        snapshot = await store.snapshot("s1", timeout_s=T)
        assert contents(snapshot.turns) == ["x"] and snapshot.ttl_s is not None
        assert await store.delete("s1", timeout_s=T)
        assert await store.load("s1", timeout_s=T) == []
    finally:
        await store.aclose()


def test_a_bad_url_fails_at_start_up() -> None:
    with pytest.raises(ValueError, match="redis://"):
        SessionStore.from_url("http://127.0.0.1:6379")
