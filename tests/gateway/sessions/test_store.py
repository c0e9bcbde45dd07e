"""SessionStore against a real redis-server: the Lua append, idempotency, TTL, caps,
deletes and their tombstones, owners, deadlines, and cluster safety on a one-node Redis
Cluster."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from gateway.sessions.keys import (
    SessionRef,
    generation_key,
    owner_of_key,
    request_key,
    turns_key,
)
from gateway.sessions.store import AppendOutcome, SessionStore, StoreUnavailable

pytestmark = pytest.mark.redis

T = 0.5  # per-call deadline for these tests: generous, the machine is shared
S1 = SessionRef("s1")


def turn(role: str, text: str, request_id: str = "r") -> dict[str, object]:
    return {"role": role, "content": text, "request_id": request_id, "at": time.time()}


def pair(n: int) -> list[dict[str, object]]:
    return [turn("user", f"u{n}", f"r{n}"), turn("assistant", f"a{n}", f"r{n}")]


@pytest.fixture
async def store(redis_server):
    store = SessionStore.from_url(redis_server.url)
    yield store
    await store.aclose()


async def append(store: SessionStore, session, request: str, turns, **kw) -> AppendOutcome:
    options = {"replace": False, "ttl_s": 600, "max_turns": 100, "timeout_s": T, **kw}
    if isinstance(session, str):
        session = SessionRef(session)
    return await store.append(session, request, turns, **options)


async def load(store: SessionStore, session: str | SessionRef, **kw) -> list:
    if isinstance(session, str):
        session = SessionRef(session)
    return (await store.load(session, timeout_s=kw.get("timeout_s", T))).turns


async def delete(store: SessionStore, session: str | SessionRef, tombstone_s: int = 60) -> bool:
    if isinstance(session, str):
        session = SessionRef(session)
    return await store.delete(session, tombstone_s=tombstone_s, timeout_s=T)


WRITTEN, DUPLICATE, ERASED = AppendOutcome.WRITTEN, AppendOutcome.DUPLICATE, AppendOutcome.ERASED


def contents(turns) -> list[str]:
    return [str(t["content"]) for t in turns]


async def test_append_then_load_in_order(store) -> None:
    assert await append(store, "s1", "r1", pair(1)) == WRITTEN
    assert await append(store, "s1", "r2", pair(2)) == WRITTEN
    assert contents(await load(store, "s1")) == ["u1", "a1", "u2", "a2"]
    assert await load(store, "other") == []


async def test_append_is_idempotent_per_request_id_and_digest(store) -> None:
    assert await append(store, "s1", "r1", pair(1), digest="d1") == WRITTEN
    assert await append(store, "s1", "r1", pair(1), digest="d1") == DUPLICATE
    assert contents(await load(store, "s1")) == ["u1", "a1"]
    # The same request id with other content is another turn, and is stored.
    assert await append(store, "s1", "r1", pair(2), digest="d2") == WRITTEN
    assert contents(await load(store, "s1")) == ["u1", "a1", "u2", "a2"]
    # The same request id in another session is another request.
    assert await append(store, "s2", "r1", pair(1), digest="d1") == WRITTEN


async def test_owners_have_separate_namespaces(store, redis_server) -> None:
    alice, bob = owner_of_key("key-a"), owner_of_key("key-b")
    assert alice != bob and len(alice) == 32 and "key-a" not in alice
    assert await append(store, SessionRef("user-42", alice), "r1", pair(1)) == WRITTEN
    assert await load(store, SessionRef("user-42", bob)) == []
    assert await load(store, SessionRef("user-42")) == []  # nor the keyless namespace
    assert not await delete(store, SessionRef("user-42", bob))
    assert contents(await load(store, SessionRef("user-42", alice))) == ["u1", "a1"]
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        names = [k.decode() for k in await raw.keys("*")]
    finally:
        await raw.aclose()
    assert f"gw:{{{alice}/user-42}}:turns" in names
    assert not any("key-a" in name for name in names)


async def test_ttl_is_set_and_refreshed(store, redis_server) -> None:
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        await append(store, "s1", "r1", pair(1), ttl_s=600, digest="d")
        assert 590 <= await raw.ttl(turns_key(S1)) <= 600
        assert 590 <= await raw.ttl(request_key(S1, "r1", "d")) <= 600
        await raw.expire(turns_key(S1), 5)
        await append(store, "s1", "r2", pair(2), ttl_s=600)
        assert await raw.ttl(turns_key(S1)) > 5
        snapshot = await store.snapshot(S1, timeout_s=T)
        assert snapshot.ttl_s is not None and 590 <= snapshot.ttl_s <= 600
    finally:
        await raw.aclose()


async def test_a_session_expires_after_its_ttl(store) -> None:
    await append(store, "s1", "r1", pair(1), ttl_s=1)
    deadline = time.monotonic() + 5
    while await load(store, "s1"):
        assert time.monotonic() < deadline, "the session never expired"
        await asyncio.sleep(0.1)
    snapshot = await store.snapshot(S1, timeout_s=T)
    assert snapshot.turns == [] and snapshot.ttl_s is None


async def test_history_is_capped_at_max_turns(store) -> None:
    for n in range(1, 5):
        await append(store, "s1", f"r{n}", pair(n), max_turns=5)
    assert contents(await load(store, "s1")) == ["a2", "u3", "a3", "u4", "a4"]


async def test_replace_substitutes_the_history(store) -> None:
    await append(store, "s1", "r1", pair(1))
    await append(store, "s1", "r2", [turn("user", "x"), turn("assistant", "y")], replace=True)
    assert contents(await load(store, "s1")) == ["x", "y"]


async def test_long_replacement_is_pushed_in_batches(store) -> None:
    turns = [turn("user", f"m{i}") for i in range(1234)]
    await append(store, "s1", "r1", turns, replace=True, max_turns=2000)
    assert contents(await load(store, "s1")) == [f"m{i}" for i in range(1234)]


async def test_delete_removes_turns_and_markers_and_leaves_a_tombstone(store, redis_server) -> None:
    # Turns name the marker they were stored under (request id and digest)...
    await append(store, "s1", "r1", [dict(t, digest="d") for t in pair(1)], digest="d")
    await append(store, "s1", "r0", pair(0))  # ...or, before digests, the request id alone
    generation = (await store.load(S1, timeout_s=T)).generation
    assert generation == 0
    assert await delete(store, "s1", tombstone_s=60)
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        # Only the tombstone is left: the session's generation, with its TTL.
        assert await raw.keys("gw:{s1}*") == [generation_key(S1).encode()]
        assert 50 <= await raw.ttl(generation_key(S1)) <= 60
        tombstone = int(await raw.get(generation_key(S1)))
        assert tombstone > time.time() * 1000 - 60_000  # Redis's clock, in ms
        assert not await delete(store, "s1")
        # Each deletion raises it, even twice within a millisecond.
        assert int(await raw.get(generation_key(S1))) > tombstone
    finally:
        await raw.aclose()
    after = (await store.load(S1, timeout_s=T)).generation
    assert after > tombstone
    # A request that loaded before the deletion cannot bring the session back...
    assert await append(store, "s1", "r2", pair(2), generation=generation) == ERASED
    assert await load(store, "s1") == []
    # ...one that loaded after it starts it afresh, and the same request id can be stored.
    assert await append(store, "s1", "r1", pair(1), digest="d", generation=after) == WRITTEN
    assert contents(await load(store, "s1")) == ["u1", "a1"]


async def test_an_append_of_unknown_generation_is_not_checked(store) -> None:
    """A request that could not read the store (Redis was down) knows no generation."""
    await append(store, "s1", "r1", pair(1))
    await delete(store, "s1")
    assert await append(store, "s1", "r2", pair(2)) == WRITTEN


async def test_an_expired_tombstone_does_not_refuse_later_requests(store, redis_server) -> None:
    await append(store, "s1", "r1", pair(1))
    await delete(store, "s1", tombstone_s=1)
    seen = (await store.load(S1, timeout_s=T)).generation
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        await raw.delete(generation_key(S1))  # as if its TTL ran out
        while True:  # a TTL runs out seconds later: let Redis's clock move past ``seen``
            seconds, micros = await raw.time()
            if seconds * 1000 + micros // 1000 > seen:
                break
            await asyncio.sleep(0.001)
    finally:
        await raw.aclose()
    assert await append(store, "s1", "r2", pair(2), generation=seen) == WRITTEN
    # A new deletion still wins over that old generation: Redis's clock has moved on.
    await delete(store, "s1")
    assert await append(store, "s1", "r3", pair(3), generation=seen) == ERASED


async def test_garbage_in_the_list_is_skipped(store, redis_server) -> None:
    await append(store, "s1", "r1", pair(1))
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        await raw.rpush(turns_key(S1), b"not json", b'{"no": "role"}')
    finally:
        await raw.aclose()
    assert contents(await load(store, "s1")) == ["u1", "a1"]


@pytest.mark.parametrize("owner", [None, owner_of_key("some key")])
def test_keys_of_a_session_share_one_cluster_slot(owner) -> None:
    session = SessionRef("user:42", owner)
    slot = key_slot(turns_key(session).encode())
    assert key_slot(request_key(session, "req-1", "d").encode()) == slot
    assert key_slot(request_key(session, "{weird}", None).encode()) == slot
    assert key_slot(generation_key(session).encode()) == slot
    assert key_slot(turns_key(SessionRef("user:43", owner)).encode()) != slot


def test_the_keyless_layout_is_the_one_before_owners() -> None:
    """Without API keys, sessions stored before owners existed are still found."""
    assert turns_key(SessionRef("user:42")) == "gw:{user:42}:turns"
    assert request_key(SessionRef("user:42"), "r1", None) == "gw:{user:42}:req:r1"


async def test_a_stopped_server_is_store_unavailable(redis_server) -> None:
    store = SessionStore.from_url(redis_server.url)
    try:
        await store.ping(timeout_s=T)
        await asyncio.to_thread(redis_server.stop)
        with pytest.raises(StoreUnavailable) as caught:
            await load(store, "s1")
        assert caught.value.op == "load"
        with pytest.raises(StoreUnavailable):
            await append(store, "s1", "r1", pair(1))
        await asyncio.to_thread(redis_server.start)
        assert await append(store, "s1", "r1", pair(1)) == WRITTEN
    finally:
        await store.aclose()


async def test_a_frozen_server_misses_the_deadline(redis_server) -> None:
    store = SessionStore.from_url(redis_server.url)
    try:
        await store.ping(timeout_s=T)
        redis_server.pause()  # accepts connections, never answers
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"no answer within 0\.2 s"):
            await load(store, "s1", timeout_s=0.2)
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
        assert await append(store, "s1", "r1", pair(1), digest="d") == WRITTEN
        assert await append(store, "s1", "r1", pair(1), digest="d") == DUPLICATE
        await append(store, "s1", "r2", [turn("user", "x")], replace=True)
        snapshot = await store.snapshot(S1, timeout_s=T)
        assert contents(snapshot.turns) == ["x"] and snapshot.ttl_s is not None
        assert await delete(store, "s1")
        assert await load(store, "s1") == []
        assert await append(store, "s1", "r3", pair(3), generation=0) == ERASED
        owned = SessionRef("s1", owner_of_key("k"))
        assert await append(store, owned, "r1", pair(1)) == WRITTEN
        assert await delete(store, owned)
    finally:
        await store.aclose()


def test_a_bad_url_fails_at_start_up() -> None:
    with pytest.raises(ValueError, match="redis://"):
        SessionStore.from_url("http://127.0.0.1:6379")
