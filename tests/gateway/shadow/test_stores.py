"""The two shadow stores hold what was written, and their caps hold: a Redis stream
(length and age) and rotated JSONL files (size, count and age)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.policy.shadow import JsonlStoreSpec, RedisStoreSpec
from gateway.shadow.jsonl_store import JsonlShadowStore, started_ms
from gateway.shadow.redis_store import RedisShadowStore, close_client, redis_client
from gateway.shadow.store import ShadowStoreError
from tests.fixtures.redis import RedisServer
from tests.gateway.shadow.conftest import record, stream_records
from tests.helpers import eventually_value


async def _lines(store: JsonlShadowStore | RedisShadowStore) -> list[dict[str, object]]:
    return [json.loads(line.data) async for line in store.read()]


@pytest.mark.redis
async def test_redis_stream_keeps_the_newest_records_up_to_its_cap(
    redis_server: RedisServer,
) -> None:
    client = redis_client(redis_server.url)
    store = RedisShadowStore(client, RedisStoreSpec(key="shadow:test", max_records=5))
    try:
        for number in range(12):
            await store.append(record(number))
            assert await store.length() == min(number + 1, 5)  # exact: never over the cap
        held = await stream_records(redis_server.url, "shadow:test")
        assert held == [record(n) for n in range(7, 12)]
        assert await _lines(store) == held  # the reader the export uses agrees
    finally:
        await close_client(client)


@pytest.mark.redis
async def test_redis_stream_read_crosses_batches(redis_server: RedisServer) -> None:
    client = redis_client(redis_server.url)
    store = RedisShadowStore(client, RedisStoreSpec(max_records=2000))
    try:
        for number in range(1203):  # more than two read batches of 500
            await store.append(record(number))
        ids = [line["id"] async for line in _iter(store)]
        assert ids == [f"req-{n}" for n in range(1203)]
    finally:
        await close_client(client)


async def _iter(store: RedisShadowStore):  # type: ignore[no-untyped-def]
    async for line in store.read():
        yield json.loads(line.data)


@pytest.mark.redis
async def test_redis_records_older_than_the_ttl_are_trimmed_and_the_key_expires(
    redis_server: RedisServer,
) -> None:
    client = redis_client(redis_server.url)
    store = RedisShadowStore(client, RedisStoreSpec(key="shadow:ttl", ttl_s=1))
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        await store.append(record(1))
        assert 0 < await raw.pttl("shadow:ttl") <= 1000  # gone 1 s after its last write anyway

        async def swept() -> int:
            await store.sweep()
            return await store.length()

        await eventually_value(swept, lambda n: n == 0, timeout_s=5, what="the record trimmed")
        await store.append(record(2))
        assert [r["id"] for r in await stream_records(redis_server.url, "shadow:ttl")] == ["req-2"]
    finally:
        await raw.aclose()
        await close_client(client)


@pytest.mark.redis
async def test_redis_down_is_a_store_error(redis_server: RedisServer) -> None:
    client = redis_client(redis_server.url)
    store = RedisShadowStore(client, RedisStoreSpec())
    redis_server.stop()
    try:
        with pytest.raises(ShadowStoreError, match="redis append"):
            await store.append(record(1))
        with pytest.raises(ShadowStoreError, match="redis read"):
            await _lines(store)
    finally:
        await close_client(client)


def _spec(tmp_path: Path, **options: int) -> JsonlStoreSpec:
    return JsonlStoreSpec(dir=tmp_path / "shadow", **options)  # type: ignore[arg-type]


async def test_jsonl_rotates_by_size_and_keeps_max_files(tmp_path: Path) -> None:
    spec = _spec(tmp_path, max_file_bytes=2048, max_files=3)
    store = JsonlShadowStore(spec)
    size = len(json.dumps(record(0), separators=(",", ":"))) + 1
    for number in range(60):
        await store.append(record(number))
        files = store.files()
        assert len(files) <= 3
        for path in files:  # a file passes its cap by the one record that crossed it, at most
            assert path.stat().st_size < 2048 + size
    held = await _lines(store)
    assert [r["id"] for r in held] == [f"req-{n}" for n in range(60 - len(held), 60)]
    assert len(held) >= 2 * (2048 // size)  # two full files at least, and the current one
    assert held[-1] == record(59)


async def test_jsonl_files_are_private(tmp_path: Path) -> None:
    store = JsonlShadowStore(_spec(tmp_path))
    await store.append(record(1))
    assert stat.S_IMODE((tmp_path / "shadow").stat().st_mode) == 0o700
    assert stat.S_IMODE(store.files()[0].stat().st_mode) == 0o600


async def test_jsonl_rotates_by_age_and_deletes_files_once_their_first_record_is_ttl_old(
    tmp_path: Path,
) -> None:
    now = [1_000_000.0]
    store = JsonlShadowStore(_spec(tmp_path, ttl_s=400, max_files=100), clock=lambda: now[0])
    await store.append(record(1))
    now[0] += 99  # under a quarter of the ttl: same file
    await store.append(record(2))
    assert len(store.files()) == 1
    now[0] += 1  # a quarter: a new file
    await store.append(record(3))
    first, second = store.files()
    assert started_ms(first) == 1_000_000_000 and started_ms(second) == 1_000_100_000
    now[0] = 1_000_000.0 + 399.9
    await store.sweep()
    assert store.files() == [first, second]  # record 1 is not yet 400 s old
    now[0] = 1_000_000.0 + 400
    await store.sweep()
    assert store.files() == [second]  # records 1 and 2 went together, when 1 reached the ttl
    assert [r["id"] for r in await _lines(store)] == ["req-3"]
    now[0] += 1000
    await store.sweep()
    assert store.files() == [] and await _lines(store) == []


async def test_jsonl_reading_names_file_and_line(tmp_path: Path) -> None:
    store = JsonlShadowStore(_spec(tmp_path))
    await store.append(record(1))
    await store.append(record(2))
    where = [line.where async for line in store.read()]
    assert where == [f"{store.files()[0]}:1", f"{store.files()[0]}:2"]


async def test_jsonl_unwritable_dir_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = JsonlShadowStore(JsonlStoreSpec(dir=blocker / "shadow"))
    with pytest.raises(ShadowStoreError, match="jsonl append"):
        await store.append(record(1))
