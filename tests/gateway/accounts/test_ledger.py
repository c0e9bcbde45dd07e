"""The usage ledger against a real redis-server: the layout it writes, coalescing,
reservations released exactly once, and nothing lost or counted twice across an outage
(Redis stopped and restarted, or frozen so that a write's reply is lost)."""

from __future__ import annotations

import calendar
import logging
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from gateway.accounts.layout import Calendar, budget_key, usage_ids_key, usage_key, writer_key
from gateway.accounts.ledger import Charge, Ledger
from gateway.accounts.limiter import Admission
from gateway.accounts.metrics import AccountMetrics
from gateway.redis_client import close_client, redis_client
from tests.helpers import eventually, eventually_value

pytestmark = pytest.mark.redis

TODAY = time.strftime("%Y-%m-%d", time.gmtime())


@pytest.fixture
async def ledger(client, metrics) -> AsyncIterator[Ledger]:
    ledger = Ledger(client, metrics=metrics, max_backoff_s=0.2)
    yield ledger
    await ledger.aclose(timeout_s=0.5)


def charge(tier: str = "edge", model: str = "edge-model", **fields: int) -> Charge:
    values = {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_nusd": 70,
        "cloud_nusd": 5000,
        "requests": 1,
    }
    values.update(fields)
    return Charge(tier=tier, model=model, **values)  # type: ignore[arg-type]


def admission(key_id: str, reserved: int, *, tpm: bool = True) -> Admission:
    return Admission(
        key_id=key_id,
        budget_key=budget_key(key_id, TODAY),
        budget_expires_at=int(time.time()) + 86400 * 8,
        reserved_nusd=reserved,
        counts_tokens=tpm,
    )


async def usage_of(client: aioredis.Redis, key_id: str) -> dict[str, int]:
    raw = await client.hgetall(usage_key(key_id, TODAY))
    return {k.decode(): int(v) for k, v in raw.items()}


async def tokens_in_window(client: aioredis.Redis, key_id: str) -> int:
    keys = [k async for k in client.scan_iter(match=f"gw:rl:{{{key_id}}}:tok:*")]
    return sum([int(await client.get(k) or 0) for k in keys])


async def test_a_settlement_lands_in_the_documented_layout(client, ledger) -> None:
    await client.hset(budget_key("key_a", TODAY), mapping={"spent": 0, "reserved": 900})
    ledger.settle(
        admission("key_a", 900),
        "key_a",
        "alpha",
        [charge(requests=0), charge("cloud", "cloud-model", cost_nusd=400, cloud_nusd=400)],
    )
    ledger.settle(None, "_static", "_static", [charge()])
    assert await ledger.flush()
    assert await usage_of(client, "key_a") == {
        "edge|edge-model|prompt_tokens": 10,
        "edge|edge-model|completion_tokens": 5,
        "edge|edge-model|cost_nusd": 70,
        "edge|edge-model|cloud_nusd": 5000,
        "cloud|cloud-model|requests": 1,
        "cloud|cloud-model|prompt_tokens": 10,
        "cloud|cloud-model|completion_tokens": 5,
        "cloud|cloud-model|cost_nusd": 400,
        "cloud|cloud-model|cloud_nusd": 400,
    }
    assert (await usage_of(client, "_static"))["edge|edge-model|requests"] == 1
    assert await client.smembers(usage_ids_key(TODAY)) == {b"key_a", b"_static"}
    budget = await client.hgetall(budget_key("key_a", TODAY))
    assert (int(budget[b"spent"]), int(budget[b"reserved"])) == (470, 0)
    assert await tokens_in_window(client, "key_a") == 30
    assert await tokens_in_window(client, "_static") == 0  # no admission: no window
    assert 399 * 86400 < await client.ttl(usage_key("key_a", TODAY)) <= 400 * 86400
    assert 0 < await client.ttl(budget_key("key_a", TODAY)) <= 8 * 86400


async def test_settlements_coalesce_per_key_day_tier_and_model(client, ledger, metrics) -> None:
    for _ in range(200):
        ledger.settle(admission("key_b", 100), "key_b", "beta", [charge()])
    assert ledger.queued == 2  # one usage entry and one budget entry, not 400
    assert metrics.ledger_queue._value.get() == 2
    assert metrics.requests.labels("beta", "edge", "edge-model")._value.get() == 200
    assert metrics.cost_usd.labels("beta", "edge", "edge-model")._value.get() == pytest.approx(
        200 * 70 / 1e9
    )
    assert await ledger.flush()
    assert ledger.queued == 0 and metrics.ledger_queue._value.get() == 0
    usage = await usage_of(client, "key_b")
    assert usage["edge|edge-model|requests"] == 200
    assert usage["edge|edge-model|completion_tokens"] == 1000
    budget = await client.hgetall(budget_key("key_b", TODAY))
    assert int(budget[b"spent"]) == 200 * 70
    assert int(budget[b"reserved"]) == 0  # never below zero, though nothing was reserved here


async def test_usage_days_turn_at_utc_midnight(client, metrics) -> None:
    midnight = calendar.timegm((2099, 12, 31, 0, 0, 0)) + 86400  # 2100-01-01T00:00:00Z
    now = [midnight - 0.001]
    ledger = Ledger(client, metrics=metrics, calendar=Calendar(lambda: now[0]))
    ledger.settle(None, "key_j", "iota", [charge()])
    now[0] = midnight
    ledger.settle(None, "key_j", "iota", [charge(), charge()])
    assert await ledger.flush()
    for day, requests in (("2099-12-31", 1), ("2100-01-01", 2)):
        usage = await client.hgetall(usage_key("key_j", day))
        assert int(usage[b"edge|edge-model|requests"]) == requests, day
        assert await client.smembers(usage_ids_key(day)) == {b"key_j"}


async def test_a_batch_sent_twice_is_applied_once(client, ledger) -> None:
    """The reply of a write can be lost after Redis applied it; the batch is then sent
    again with the same number, and the script skips it."""
    ledger.settle(admission("key_c", 0), "key_c", "gamma", [charge()])
    batch = dict(ledger._pending)  # what the next flush sends, as batch 1
    assert await ledger.flush()
    count, keys_and_args = batch["key_c"].script_call("key_c", ledger._writer, 1)
    assert await client.evalsha(ledger._sha, count, *keys_and_args) == 0
    assert (await usage_of(client, "key_c"))["edge|edge-model|requests"] == 1
    assert await client.get(writer_key("key_c", ledger._writer)) == b"1"


async def test_nothing_is_lost_while_redis_is_stopped(
    redis_server, client, ledger, metrics
) -> None:
    ledger.start()
    redis_server.stop()
    for _ in range(30):
        ledger.settle(admission("key_d", 0), "key_d", "delta", [charge()])
    await eventually(lambda: metrics.store_errors.labels("settle")._value.get() >= 2)
    assert ledger.queued == 2
    redis_server.start()  # empty: everything comes from the gateway's queue

    async def requests() -> int:
        return (await usage_of(client, "key_d")).get("edge|edge-model|requests", 0)

    await eventually_value(requests, lambda n: n == 30, timeout_s=10.0, what="usage replayed")
    await eventually(lambda: ledger.queued == 0)
    assert await tokens_in_window(client, "key_d") == 30 * 15


async def test_a_frozen_redis_loses_nothing_and_counts_nothing_twice(
    redis_server, client, ledger, metrics
) -> None:
    """SIGSTOP: writes time out, but Redis may apply them when it wakes; the replays must
    not count them again."""
    ledger.start()
    ledger.settle(admission("key_e", 50), "key_e", "epsilon", [charge()])
    await eventually(lambda: ledger.queued == 0)
    redis_server.pause()
    try:
        for _ in range(10):
            ledger.settle(admission("key_e", 50), "key_e", "epsilon", [charge()])
        await eventually(lambda: metrics.store_errors.labels("settle")._value.get() >= 1)
        for _ in range(10):  # these coalesce into the next batch, behind the one in doubt
            ledger.settle(admission("key_e", 50), "key_e", "epsilon", [charge()])
    finally:
        redis_server.resume()
    await eventually(lambda: ledger.queued == 0, timeout_s=10.0)
    usage = await usage_of(client, "key_e")
    assert usage["edge|edge-model|requests"] == 21
    assert usage["edge|edge-model|cost_nusd"] == 21 * 70
    budget = await client.hgetall(budget_key("key_e", TODAY))
    assert int(budget[b"spent"]) == 21 * 70


async def test_aclose_writes_what_is_queued(client, metrics) -> None:
    ledger = Ledger(client, metrics=metrics)
    ledger.start()
    ledger.settle(None, "_anonymous", "_anonymous", [charge(), charge("cloud", "c")])
    await ledger.aclose()
    usage = await usage_of(client, "_anonymous")
    assert usage["edge|edge-model|requests"] == 1 and usage["cloud|c|requests"] == 1


async def test_a_key_redis_refuses_does_not_hold_back_the_others(
    client, ledger, metrics, caplog
) -> None:
    await client.set(usage_key("key_f", TODAY), "not a hash")
    ledger.settle(None, "key_f", "phi", [charge()])
    ledger.settle(None, "key_g", "gamma", [charge()])
    with caplog.at_level(logging.ERROR, logger="gateway.accounts"):
        assert await ledger.flush()
    assert (await usage_of(client, "key_g"))["edge|edge-model|requests"] == 1
    assert metrics.store_errors.labels("settle_refused")._value.get() == 1
    assert "key_f" in caplog.text
    assert ledger.queued == 0


async def test_on_a_redis_cluster_every_script_stays_in_its_keys_slot(redis_cluster_node) -> None:
    """A one-node cluster refuses cross-slot access as a real one does: admission and
    settlement touch only keys tagged with their API key's id (and the day's id set)."""
    from gateway.accounts.limiter import Limiter
    from gateway.accounts.model import ApiKey, Budget

    client = redis_client(redis_cluster_node.url, cluster=True, max_connections=8, timeout_s=1.0)
    metrics = AccountMetrics(CollectorRegistry())
    try:
        limiter, ledger = Limiter(client, metrics=metrics), Ledger(client, metrics=metrics)
        for key_id in ("key_h", "key_i"):
            key = ApiKey(
                id=key_id,
                name=key_id,
                hash="0" * 64,
                created_at=0.0,
                rpm=10,
                tpm=1000,
                budget=Budget(period="day", limit_usd=1.0),
            )
            admitted = await limiter.admit(
                key, estimate_tokens=5, estimate_nusd=100, on_store_error="closed"
            )
            assert admitted.checked and admitted.reserved_nusd == 100
            ledger.settle(admitted, key_id, key_id, [charge()])
        assert await ledger.flush()
        for key_id in ("key_h", "key_i"):
            assert (await usage_of(client, key_id))["edge|edge-model|requests"] == 1  # type: ignore[arg-type]
            assert await tokens_in_window(client, key_id) == 15  # type: ignore[arg-type]
        assert metrics.store_errors.labels("settle")._value.get() == 0
    finally:
        await close_client(client)
