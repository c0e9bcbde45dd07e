"""usage_report() against a real redis-server: sums over days, tiers and models, the
saving, one key or every key (found through the days' id sets), names, ranges, outages,
and a one-node Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, timedelta

import pytest
import redis.asyncio as aioredis

from gateway.accounts.usage import (
    MAX_DAYS,
    Usage,
    UsageStoreUnavailable,
    report_range,
    usage_report,
)
from gateway.errors import InvalidRequest
from gateway.redis_client import close_client, redis_client
from tests.fixtures.redis import RedisServer
from tests.gateway.accounts.usage_ledger import write_key, write_usage
from tests.scripted import unused_port

pytestmark = pytest.mark.redis

D1, D2, D3 = date(2026, 3, 30), date(2026, 3, 31), date(2026, 4, 1)
KA, KB, KC, KD, KE = (f"key_00000000000{c}" for c in "abcde")


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(redis_server.url, max_connections=4, timeout_s=2.0)
    yield client
    await close_client(client)


async def two_keys(client: aioredis.Redis) -> None:
    """KA: edge on D1 and D2, cloud on D2, two edge models; KB: cloud on D3."""
    await write_key(client, KA, "mobile-free")
    await write_key(client, KB, "desktop")
    await write_usage(client, KA, D1, "edge", "small", requests=2, prompt_tokens=100,
                      completion_tokens=40, cost_nusd=0, cloud_nusd=44_000)  # fmt: skip
    await write_usage(client, KA, D2, "edge", "small", requests=1, prompt_tokens=10,
                      completion_tokens=5, cost_nusd=0, cloud_nusd=5_000)  # fmt: skip
    await write_usage(client, KA, D2, "edge", "tiny", requests=3, prompt_tokens=30,
                      completion_tokens=30, cost_nusd=600, cloud_nusd=24_000)  # fmt: skip
    await write_usage(client, KA, D2, "cloud", "big", requests=1, prompt_tokens=1000,
                      completion_tokens=500, cost_nusd=500_000, cloud_nusd=500_000)  # fmt: skip
    await write_usage(client, KB, D3, "cloud", "big", requests=4, prompt_tokens=400,
                      completion_tokens=100, cost_nusd=140_000, cloud_nusd=140_000)  # fmt: skip


async def test_one_key_summed_over_days_tiers_and_models(client: aioredis.Redis) -> None:
    await two_keys(client)
    report = await usage_report(client, key_id=KA, start=D1, end=D3)
    (key,) = report.keys
    assert (key.key_id, key.key_name) == (KA, "mobile-free")
    assert key.tiers == {
        "edge": Usage(requests=6, prompt_tokens=140, completion_tokens=75, cost_nusd=600,
                      cloud_nusd=73_000),
        "cloud": Usage(requests=1, prompt_tokens=1000, completion_tokens=500,
                       cost_nusd=500_000, cloud_nusd=500_000),
    }  # fmt: skip
    assert [(m.tier, m.model, m.usage.requests) for m in key.models] == [
        ("cloud", "big", 1), ("edge", "small", 3), ("edge", "tiny", 3),
    ]  # fmt: skip
    assert [(d.day, d.usage.requests, d.usage.cost_nusd) for d in key.days] == [
        (D1, 2, 0), (D2, 5, 500_600),
    ]  # fmt: skip
    assert key.total == key.tiers["edge"] + key.tiers["cloud"]
    assert report.total == key.total
    # The saving: the cloud equivalent less what was spent; the cloud's own answers save 0.
    assert report.total.saved_nusd == 573_000 - 500_600
    body = report.to_json()
    assert body["total"] == {
        "requests": 7,
        "prompt_tokens": 1140,
        "completion_tokens": 575,
        "total_tokens": 1715,
        "cost_usd": 0.0005006,
        "cloud_equivalent_usd": 0.000573,
        "saved_usd": 0.0000724,
        "saved_share": round(72_400 / 573_000, 6),
    }
    assert body["tiers"]["cloud"]["saved_usd"] == 0.0
    assert body["tiers"]["edge"]["saved_usd"] == 0.0000724


async def test_every_key_comes_from_the_days_id_sets(client: aioredis.Redis) -> None:
    await two_keys(client)
    # Usage whose day set does not name the key is not found by an all-keys report...
    await write_usage(client, KE, D2, "edge", "small", requests=9, prompt_tokens=9,
                      completion_tokens=9, cost_nusd=0, cloud_nusd=9, listed=False)  # fmt: skip
    # ...nor is usage outside the range.
    await write_usage(client, KC, D3 + timedelta(days=1), "edge", "small", requests=1,
                      prompt_tokens=1, completion_tokens=1, cost_nusd=0, cloud_nusd=1)  # fmt: skip
    report = await usage_report(client, key_id=None, start=D1, end=D3)
    assert [k.key_id for k in report.keys] == [KA, KB]
    assert report.total.requests == 7 + 4
    assert report.tiers["cloud"].requests == 1 + 4
    assert report.total.cost_nusd == 500_600 + 140_000
    body = report.to_json()
    assert body["object"] == "usage"
    assert (body["start"], body["end"]) == ("2026-03-30", "2026-04-01")
    assert [(d["key_id"], d["key_name"]) for d in body["data"]] == [
        (KA, "mobile-free"), (KB, "desktop"),
    ]  # fmt: skip
    assert set(body["data"][1]) == {"key_id", "key_name", "tiers", "models", "days", "total"}
    assert body["data"][1]["tiers"]["edge"]["requests"] == 0  # both tiers always there
    assert body["data"][1]["days"] == [{"date": "2026-04-01", **body["data"][1]["total"]}]
    assert body["data"][1]["models"] == [
        {"tier": "cloud", "model": "big", **body["data"][1]["tiers"]["cloud"]}
    ]
    # Only D1..D2: KB had no usage then, so it is not listed.
    narrow = await usage_report(client, key_id=None, start=D1, end=D2)
    assert [k.key_id for k in narrow.keys] == [KA]


async def test_a_key_filter_reads_that_key_only(client: aioredis.Redis) -> None:
    await two_keys(client)
    report = await usage_report(client, key_id=KB, start=D1, end=D3)
    assert [k.key_id for k in report.keys] == [KB]
    assert report.total.requests == 4
    # A named key without usage gets zeros; without a stored record, no name.
    idle = await usage_report(client, key_id=KB, start=D1, end=D2)
    assert idle.keys[0].total == Usage() and idle.keys[0].key_name == "desktop"
    unknown = await usage_report(client, key_id="key_0000000000ff", start=D1, end=D3)
    assert [(k.key_id, k.key_name, k.total) for k in unknown.keys] == [
        ("key_0000000000ff", None, Usage())
    ]
    assert unknown.to_json()["total"]["saved_share"] is None


async def test_traffic_without_a_stored_key_is_named_by_its_id(client: aioredis.Redis) -> None:
    await write_usage(client, "_static", D1, "edge", "small", requests=1, prompt_tokens=1,
                      completion_tokens=1, cost_nusd=0, cloud_nusd=800)  # fmt: skip
    await write_usage(client, KD, D1, "edge", "small", requests=1, prompt_tokens=1,
                      completion_tokens=1, cost_nusd=0, cloud_nusd=800)  # fmt: skip
    report = await usage_report(client, key_id=None, start=D1, end=D1)
    assert [(k.key_id, k.key_name) for k in report.keys] == [("_static", "_static"), (KD, None)]


async def test_odd_fields_are_skipped_and_model_names_may_hold_bars(
    client: aioredis.Redis,
) -> None:
    key = f"gw:usage:{{{KA}}}:{D1.isoformat()}"
    await client.hset(
        key,
        mapping={
            "edge|org|model|requests": 2,
            "edge|org|model|cost_nusd": 10,
            "edge|org|model|future_counter": 5,  # unknown counter
            "edge|org|model|cloud_nusd": "not a number",
            "garbage": 1,
        },
    )
    report = await usage_report(client, key_id=KA, start=D1, end=D1)
    (model,) = report.keys[0].models
    assert (model.tier, model.model) == ("edge", "org|model")
    assert model.usage == Usage(requests=2, cost_nusd=10)


async def test_a_long_range_is_read_in_batches(client: aioredis.Redis) -> None:
    last = D1 + timedelta(days=MAX_DAYS - 1)
    for day in (D1, D1 + timedelta(days=250), last):
        await write_usage(client, KA, day, "edge", "small", requests=1, prompt_tokens=1,
                          completion_tokens=1, cost_nusd=1, cloud_nusd=3)  # fmt: skip
    for key_id in (None, KA):
        report = await usage_report(client, key_id=key_id, start=D1, end=last)
        assert [d.day for d in report.keys[0].days] == [D1, D1 + timedelta(days=250), last]
        assert report.total.saved_nusd == 6


@pytest.mark.parametrize(
    ("start", "end", "param"),
    [
        (D1, D1 + timedelta(days=MAX_DAYS), "end"),  # 401 days
        (D2, D1, "end"),
    ],
)
async def test_ranges_past_the_limits_are_refused(
    client: aioredis.Redis, start: date, end: date, param: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await usage_report(client, key_id=None, start=start, end=end)
    assert caught.value.param == param


async def test_a_bad_key_id_is_refused(client: aioredis.Redis) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await usage_report(client, key_id="a}b", start=D1, end=D1)
    assert caught.value.param == "key_id"


async def test_redis_down_is_store_unavailable() -> None:
    client = redis_client(f"redis://127.0.0.1:{unused_port()}/0", max_connections=2, timeout_s=1)
    try:
        with pytest.raises(UsageStoreUnavailable) as caught:
            await usage_report(client, key_id=None, start=D1, end=D2)
    finally:
        await close_client(client)
    assert caught.value.status == 503
    assert caught.value.headers()["Retry-After"] == "1"


async def test_a_redis_cluster_is_read_across_slots(redis_cluster_node: RedisServer) -> None:
    client = redis_client(redis_cluster_node.url, cluster=True, max_connections=4, timeout_s=2)
    try:
        await two_keys(client)  # type: ignore[arg-type]
        report = await usage_report(client, key_id=None, start=D1, end=D3)
    finally:
        await close_client(client)
    assert [k.key_id for k in report.keys] == [KA, KB]
    assert [k.key_name for k in report.keys] == ["mobile-free", "desktop"]
    assert report.total.requests == 11


TODAY = date(2026, 2, 14)


@pytest.mark.parametrize(
    ("period", "start", "end", "expected"),
    [
        (None, None, None, (TODAY, TODAY)),
        ("day", None, None, (TODAY, TODAY)),
        ("month", None, None, (date(2026, 2, 1), TODAY)),
        (None, "2026-01-01", None, (date(2026, 1, 1), TODAY)),
        (None, None, "2026-01-05", (date(2026, 1, 5), date(2026, 1, 5))),
        (None, "2025-02-01", "2026-01-31", (date(2025, 2, 1), date(2026, 1, 31))),
    ],
)
def test_report_range(
    period: str | None, start: str | None, end: str | None, expected: tuple[date, date]
) -> None:
    assert report_range(period=period, start=start, end=end, today=TODAY) == expected


@pytest.mark.parametrize(
    ("period", "start", "end", "param"),
    [
        ("week", None, None, "period"),
        ("day", "2026-01-01", None, "period"),
        (None, "yesterday", None, "start"),
        (None, "2026-02-30", None, "start"),
        (None, None, "20260101", "end"),
        (None, None, "2026-1-1", "end"),
        (None, "2026-02-15", None, "start"),  # after today, where end defaults to
        (None, "2026-01-10", "2026-01-09", "end"),
        (None, "2024-01-01", "2026-01-01", "end"),  # over 400 days
    ],
)
def test_bad_ranges_name_the_param(
    period: str | None, start: str | None, end: str | None, param: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        report_range(period=period, start=start, end=end, today=TODAY)
    assert caught.value.param == param
