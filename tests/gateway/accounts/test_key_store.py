"""KeyStore against a real redis-server: round trips, hashing, checks naming the field,
concurrent changes, and a one-node Redis Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.accounts import codec
from gateway.accounts.errors import KeyNotFound
from gateway.accounts.model import KEY_PREFIX, Budget, key_hash
from gateway.accounts.store import KEYS_SET, KeyStore, hash_key, record_key
from gateway.errors import InvalidRequest, KeyStoreUnavailable
from gateway.redis_client import close_client, redis_client
from tests.fixtures.redis import RedisServer


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[KeyStore]:
    client = redis_client(redis_server.url, max_connections=8, timeout_s=2.0)
    yield KeyStore(client, timeout_s=2.0)
    await close_client(client)


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def everything_in(client: aioredis.Redis) -> list[bytes]:
    """Every key name and every value in the server, whatever its type."""
    found: list[object] = []
    async for name in client.scan_iter():
        found.append(name)
        kind = await client.type(name)
        if kind == b"string":
            found.append(await client.get(name))
        elif kind == b"set":
            found.extend(await client.smembers(name))
        elif kind == b"hash":
            for field, value in (await client.hgetall(name)).items():
                found += [field, value]
        elif kind == b"list":
            found.extend(await client.lrange(name, 0, -1))
        else:
            raise AssertionError(f"unexpected {kind!r} at {name!r}")
    assert all(isinstance(item, bytes) for item in found)
    return [item for item in found if isinstance(item, bytes)]


async def test_a_key_round_trips(store: KeyStore) -> None:
    budget = Budget(period="month", limit_usd=25.0, soft_limit_usd=20.0)
    key, plain = await store.create(
        name="  mobile free  ",
        metadata={"plan": "free"},
        rpm=60,
        tpm=10_000,
        budget=budget,
        tiers=["edge"],
    )
    assert plain.startswith(KEY_PREFIX) and len(plain) == 49
    assert key.name == "mobile free"  # surrounding spaces dropped
    assert key.hash == key_hash(plain)
    assert (key.rpm, key.tpm, key.budget) == (60, 10_000, budget)
    assert key.tiers == {"edge"}
    assert await store.get(key.id) == key
    assert await store.by_hash(key_hash(plain)) == key
    assert await store.by_hash(key_hash(plain + "x")) is None
    assert await store.list() == [key]


async def test_the_plain_key_is_never_stored(store: KeyStore, raw: aioredis.Redis) -> None:
    key, plain = await store.create(name="secret-holder", rpm=5)
    await store.update(key.id, tpm=99)
    await store.revoke(key.id)
    stored = await everything_in(raw)
    assert stored, "the store wrote nothing"
    secret = plain.encode()
    assert not [item for item in stored if secret in item]
    assert not [item for item in stored if plain[len(KEY_PREFIX) :].encode() in item]
    # What is there: the record (with the hash), the hash index and the id set.
    assert await raw.get(hash_key(key.hash)) == key.id.encode()
    assert key.id.encode() in await raw.smembers(KEYS_SET)
    record = await raw.get(record_key(key.id))
    assert record is not None and key.hash.encode() in record


async def test_update_sets_clears_and_keeps(store: KeyStore) -> None:
    key, _ = await store.create(
        name="a",
        metadata={"team": "x"},
        rpm=10,
        tpm=20,
        budget=Budget(period="day", limit_usd=1.0),
    )
    changed = await store.update(key.id, rpm=None, name="b")  # None clears, left out stays
    assert (changed.name, changed.rpm, changed.tpm) == ("b", None, 20)
    assert changed.metadata == {"team": "x"} and changed.budget == key.budget
    cleared = await store.update(key.id, budget=None, metadata=None, tiers=["cloud", "edge"])
    assert cleared.budget is None and cleared.metadata == {}
    assert await store.get(key.id) == cleared
    assert cleared.limited  # tpm still set
    assert not (await store.update(key.id, tpm=None)).limited


async def test_revoke_is_for_good_and_listed_only_when_asked(store: KeyStore) -> None:
    kept, _ = await store.create(name="kept")
    gone, _ = await store.create(name="gone")
    revoked = await store.revoke(gone.id)
    assert revoked.revoked and revoked.revoked_at is not None
    again = await store.revoke(gone.id)
    assert again.revoked_at == revoked.revoked_at  # revoking twice changes nothing
    assert [k.id for k in await store.list()] == [kept.id]
    assert [k.id for k in await store.list(include_revoked=True)] == [kept.id, gone.id]
    assert (await store.by_hash(gone.hash)) == revoked  # found, and marked revoked


async def test_concurrent_updates_both_land(store: KeyStore) -> None:
    key, _ = await store.create(name="busy")
    await asyncio.gather(
        *(store.update(key.id, rpm=7) for _ in range(10)),
        *(store.update(key.id, metadata={"m": "1"}) for _ in range(10)),
        *(store.update(key.id, tpm=9) for _ in range(10)),
    )
    final = await store.get(key.id)
    assert (final.rpm, final.tpm, dict(final.metadata)) == (7, 9, {"m": "1"})


async def test_unknown_and_malformed_ids(store: KeyStore) -> None:
    with pytest.raises(KeyNotFound) as missing:
        await store.get("key_000000000000")
    assert missing.value.status == 404
    for op in (store.get, store.revoke):
        with pytest.raises(InvalidRequest) as bad:
            await op("key_{x}")
        assert bad.value.param == "key_id"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"name": "tab\there"}, "name"),
        ({"name": "ok", "rpm": 0}, "rpm"),
        ({"name": "ok", "rpm": True}, "rpm"),
        ({"name": "ok", "tpm": -5}, "tpm"),
        ({"name": "ok", "tpm": 1.5}, "tpm"),
        ({"name": "ok", "budget": Budget(period="day", limit_usd=0)}, "budget.limit_usd"),
        (
            {"name": "ok", "budget": Budget(period="day", limit_usd=5, soft_limit_usd=5)},
            "budget.soft_limit_usd",
        ),
        ({"name": "ok", "budget": {"period": "week", "limit_usd": 5}}, "budget.period"),
        ({"name": "ok", "budget": {"period": "day", "limit_usd": 5, "x": 1}}, "budget.x"),
        ({"name": "ok", "tiers": []}, "tiers"),
        ({"name": "ok", "tiers": ["edge", "moon"]}, "tiers"),
        ({"name": "ok", "tiers": "edge"}, "tiers"),
        ({"name": "ok", "metadata": {"k": 1}}, "metadata.k"),
        ({"name": "ok", "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
        ({"name": "ok", "metadata": {"k" * 65: "v"}}, "metadata"),
        ({"name": "ok", "metadata": {"k": "v" * 513}}, "metadata.k"),
    ],
)
async def test_bad_fields_are_refused_naming_the_field(
    store: KeyStore, raw: aioredis.Redis, fields: dict[str, object], param: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        await store.create(**fields)  # type: ignore[arg-type]
    assert info.value.param == param, info.value.message
    assert info.value.status == 400
    assert await raw.dbsize() == 0  # refused before anything was written


async def test_an_unreadable_record_is_skipped_in_lists_and_a_503_elsewhere(
    store: KeyStore, raw: aioredis.Redis
) -> None:
    good, _ = await store.create(name="good")
    bad, _ = await store.create(name="bad")
    await raw.set(record_key(bad.id), b"{not json")
    assert [k.id for k in await store.list()] == [good.id]
    with pytest.raises(KeyStoreUnavailable):
        await store.get(bad.id)
    with pytest.raises(KeyStoreUnavailable):
        await store.by_hash(bad.hash)


async def test_redis_down_is_key_store_unavailable(
    store: KeyStore, redis_server: RedisServer
) -> None:
    key, _ = await store.create(name="x")
    redis_server.stop()
    for call in (store.list(), store.get(key.id), store.by_hash(key.hash), store.revoke(key.id)):
        with pytest.raises(KeyStoreUnavailable) as info:
            await call
        assert info.value.status == 503 and info.value.headers() == {"Retry-After": "1"}


async def test_a_hung_redis_is_bounded_by_the_deadline(redis_server: RedisServer) -> None:
    client = redis_client(redis_server.url, max_connections=2, timeout_s=5.0)
    quick = KeyStore(client, timeout_s=0.2)
    try:
        await quick.ping()
        redis_server.pause()
        with pytest.raises(KeyStoreUnavailable, match=r"within 0\.2 s"):
            await quick.by_hash("0" * 64)
    finally:
        redis_server.resume()
        await close_client(client)


async def test_on_a_redis_cluster(redis_cluster_node: RedisServer) -> None:
    client = redis_client(redis_cluster_node.url, cluster=True, max_connections=8, timeout_s=2.0)
    store = KeyStore(client)
    try:
        key, plain = await store.create(name="clustered", tpm=100)
        other, _ = await store.create(name="second")
        assert await store.by_hash(key_hash(plain)) == key
        assert [k.id for k in await store.list()] == [key.id, other.id]
        assert (await store.update(key.id, tpm=None)).tpm is None
        assert (await store.revoke(key.id)).revoked
    finally:
        await close_client(client)


def test_the_stored_form_round_trips_and_carries_no_plain_key() -> None:
    from gateway.accounts.model import ApiKey

    key = ApiKey(
        id="key_0123456789ab",
        name="n",
        hash="ab" * 32,
        created_at=1.5,
        budget=Budget(period="day", limit_usd=3.0),
        tiers=frozenset({"cloud"}),
    )
    assert codec.decode(codec.encode(key)) == key
    view = codec.key_view(key)
    assert "hash" not in view and "key" not in view
    assert view["budget"] == {"period": "day", "limit_usd": 3.0, "soft_limit_usd": None}
    for broken in (b"[]", b'{"v": 2}', b'{"v": 1, "id": "x"}', b"\xff"):
        with pytest.raises(codec.UnreadableRecord):
            codec.decode(broken)
