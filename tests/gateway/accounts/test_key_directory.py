"""KeyDirectory against a real redis-server: the cache and its bounds, stale copies
while Redis is away, one read for many concurrent requests, the constant-time check."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.accounts.directory import KeyDirectory
from gateway.accounts.model import new_secret
from gateway.accounts.store import KeyStore, hash_key
from gateway.errors import KeyStoreUnavailable
from gateway.redis_client import close_client, redis_client
from tests.fixtures.redis import RedisServer


class Clock:
    """A hand-moved monotonic clock: cache ages without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[KeyStore]:
    client = redis_client(redis_server.url, max_connections=8, timeout_s=2.0)
    yield KeyStore(client, timeout_s=0.5)
    await close_client(client)


async def get_calls(url: str) -> int:
    """GETs the server has answered since its stats were reset."""
    client = aioredis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


async def reset_stats(url: str) -> None:
    client = aioredis.from_url(url)
    try:
        await client.config_resetstat()
    finally:
        await client.aclose()


async def test_a_key_is_read_again_once_its_copy_is_ttl_old(store: KeyStore) -> None:
    clock = Clock()
    directory = KeyDirectory(store, ttl_s=0.5, clock=clock)
    key, plain = await store.create(name="k")
    assert await directory.authenticate(plain) == key
    await store.revoke(key.id)
    clock.now += 0.4
    assert await directory.authenticate(plain) == key  # the copy, still fresh
    clock.now += 0.2
    assert await directory.authenticate(plain) is None  # read again: revoked


async def test_unknown_keys_are_none_and_remembered(
    store: KeyStore, redis_server: RedisServer
) -> None:
    clock = Clock()
    directory = KeyDirectory(store, clock=clock)
    unknown = new_secret()
    await reset_stats(redis_server.url)
    assert await directory.authenticate(unknown) is None
    assert await directory.authenticate(unknown) is None
    assert await get_calls(redis_server.url) == 1  # the second answer came from the cache
    # Header bytes that are not UTF-8 arrive surrogate-escaped: just another unknown key.
    for odd in ("sk-gw-" + "\udcff" * 43, "sk-gw-" + "\ud800" * 43):
        assert await directory.authenticate(odd) is None


async def test_tokens_that_cannot_be_keys_never_reach_redis(
    store: KeyStore, redis_server: RedisServer
) -> None:
    directory = KeyDirectory(store)
    redis_server.stop()  # any read would raise KeyStoreUnavailable
    for token in ("", "sekrit", "sk-gw-short", "x" * 49, new_secret() + "x", "sk-gw-\udcff" * 8):
        assert await directory.authenticate(token) is None


async def test_a_disabled_directory_knows_no_key() -> None:
    directory = KeyDirectory(None)
    assert not directory.enabled
    assert await directory.authenticate(new_secret()) is None


async def test_concurrent_requests_share_one_read(
    store: KeyStore, redis_server: RedisServer
) -> None:
    directory = KeyDirectory(store)
    key, plain = await store.create(name="popular")
    await reset_stats(redis_server.url)
    found = await asyncio.gather(*(directory.authenticate(plain) for _ in range(50)))
    assert found == [key] * 50
    assert await get_calls(redis_server.url) == 2  # the hash index and the record, once


async def test_a_copy_stands_in_while_redis_is_down_then_503(
    store: KeyStore, redis_server: RedisServer
) -> None:
    clock = Clock()
    directory = KeyDirectory(store, ttl_s=0.5, stale_s=30.0, clock=clock)
    key, plain = await store.create(name="k")
    unknown = new_secret()
    assert await directory.authenticate(plain) == key
    assert await directory.authenticate(unknown) is None
    redis_server.stop()
    clock.now += 10
    assert await directory.authenticate(plain) == key  # Redis failed: the 10 s old copy
    assert await directory.authenticate(unknown) is None
    with pytest.raises(KeyStoreUnavailable):
        await directory.authenticate(new_secret())  # never seen: nothing to stand in
    clock.now += 21  # the copy is now 31 s old
    with pytest.raises(KeyStoreUnavailable) as info:
        await directory.authenticate(plain)
    assert info.value.status == 503 and info.value.code == "key_store_unavailable"
    redis_server.start()  # back, empty: the key is gone with the data
    assert await directory.authenticate(plain) is None


async def test_caches_are_bounded_and_apart(store: KeyStore) -> None:
    clock = Clock()
    directory = KeyDirectory(store, max_entries=3, clock=clock)
    key, plain = await store.create(name="real")
    assert await directory.authenticate(plain) == key
    for _ in range(10):  # a flood of made-up keys
        assert await directory.authenticate(new_secret()) is None
    assert len(directory._unknown) == 3
    assert list(directory._known) == [key.hash]  # the real key was not pushed out


async def test_the_record_must_carry_the_presented_hash(
    store: KeyStore, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, plain = await store.create(name="k")
    other, other_plain = await store.create(name="other")
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    directory = KeyDirectory(store)
    assert await directory.authenticate(plain) == key
    assert compared == [(key.hash.encode(), key.hash.encode())]
    # A hash index that names another key's record (corruption, or tampering): refused.
    client = aioredis.from_url(redis_server.url)
    try:
        await client.set(hash_key(other.hash), key.id)
    finally:
        await client.aclose()
    assert await KeyDirectory(store).authenticate(other_plain) is None
