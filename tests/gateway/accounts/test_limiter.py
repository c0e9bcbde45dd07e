"""The limiter's Lua script against a real redis-server: the sliding windows, Retry-After,
the x-ratelimit-* headers, budget reservations and their reset time, and what happens
while Redis is down (open: admitted unchecked; closed: 503)."""

from __future__ import annotations

import calendar
import logging
import math
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.accounts.layout import Calendar, budget_key, rate_prefix
from gateway.accounts.ledger import Charge, Ledger
from gateway.accounts.limiter import BUDGET_WARNING_HEADER, Admission, Limiter, duration
from gateway.accounts.model import ApiKey, Budget
from gateway.accounts.redis_pipe import RedisPipe
from gateway.errors import BudgetExceeded, LimitsUnavailable, RateLimited
from tests.helpers import eventually_value

pytestmark = pytest.mark.redis

USD = 1_000_000_000


def api_key(key_id: str = "key_t1", **limits: object) -> ApiKey:
    return ApiKey(id=key_id, name=f"name-{key_id}", hash="0" * 64, created_at=0.0, **limits)  # type: ignore[arg-type]


@pytest.fixture(params=["pipe", "redis-py"])
async def limiter(request, redis_server, client, metrics) -> AsyncIterator[Limiter]:
    """The limiter as the gateway runs it on one server (a RedisPipe) and on a cluster
    (redis-py's client)."""
    if request.param == "redis-py":
        yield Limiter(client, metrics=metrics)
        return
    pipe = RedisPipe.from_url(redis_server.url, timeout_s=0.5)
    yield Limiter(client, metrics=metrics, pipe=pipe)
    await pipe.aclose()


async def admit(
    limiter: Limiter, key: ApiKey, *, tokens: int = 10, nusd: int = 0, mode: str = "open"
) -> Admission:
    return await limiter.admit(
        key,
        estimate_tokens=tokens,
        estimate_nusd=nusd,
        on_store_error=mode,  # type: ignore[arg-type]
    )


async def redis_minute(client: aioredis.Redis) -> tuple[int, float]:
    """Redis's current minute and the share of it gone."""
    seconds, micros = await client.time()
    now = seconds + micros / 1e6
    minute = int(now // 60)
    return minute, (now - minute * 60) / 60


async def test_requests_per_minute_admit_up_to_the_limit_then_429(limiter, metrics) -> None:
    key = api_key(rpm=3)
    remaining = [
        (await admit(limiter, key)).headers["x-ratelimit-remaining-requests"] for _ in range(3)
    ]
    assert remaining == ["2", "1", "0"]
    with pytest.raises(RateLimited) as caught:
        await admit(limiter, key)
    error = caught.value
    assert error.status == 429 and error.code == "rate_limit_exceeded"
    assert error.body()["error"]["type"] == "requests"
    assert "requests per minute" in error.message and "limit 3" in error.message
    headers = error.headers()
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(headers["Retry-After"]) <= 120
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert "x-ratelimit-limit-tokens" not in headers  # the key has no token limit
    assert metrics.rejections.labels(key.name, "requests")._value.get() == 1
    # Another key has its own window.
    assert (await admit(limiter, api_key("key_t2", rpm=3))).checked


async def test_refused_requests_are_not_counted(limiter, client) -> None:
    key = api_key(rpm=1)
    await admit(limiter, key)
    for _ in range(5):
        with pytest.raises(RateLimited):
            await admit(limiter, key)
    minute, _ = await redis_minute(client)
    counted = await client.get(f"{rate_prefix(key.id)}:req:{minute}")
    previous = await client.get(f"{rate_prefix(key.id)}:req:{minute - 1}")
    assert int(counted or 0) + int(previous or 0) == 1


async def test_the_previous_minute_weighs_by_its_share_still_in_the_window(limiter, client) -> None:
    """rpm 10 with 20 requests last minute: the window holds 20 * (1 - f) of them, so a
    request waits until f reaches 0.55, and Retry-After says how long that is."""
    key = api_key(rpm=10)
    for _ in range(3):  # a minute that turns over mid-test is tried again
        minute, before = await redis_minute(client)
        await client.set(f"{rate_prefix(key.id)}:req:{minute - 1}", 20, ex=120)
        try:
            admission: Admission | None = await admit(limiter, key)
            error = None
        except RateLimited as exc:
            admission, error = None, exc
        after_minute, after = await redis_minute(client)
        if after_minute == minute:
            break
        await client.delete(f"{rate_prefix(key.id)}:req:{after_minute}")
    else:
        pytest.fail("the minute kept turning over")
    if after < 0.55:
        assert error is not None, f"admitted at f={after:.3f}"
        expected = (0.55 - before) * 60
        assert math.ceil((0.55 - after) * 60) <= error.retry_after_s <= math.ceil(expected) + 1
    elif before > 0.55:
        assert admission is not None, f"refused at f={before:.3f}"
        # 20 * (1 - f) + 1 of 10: what is left, rounded down.
        left = int(admission.headers["x-ratelimit-remaining-requests"])
        assert (
            math.floor(10 - 20 * (1 - before) - 1) >= left >= math.floor(10 - 20 * (1 - after) - 1)
        )


async def test_tokens_per_minute_count_settled_tokens_and_the_prompt(limiter, client) -> None:
    key = api_key(tpm=100)
    minute, _ = await redis_minute(client)
    first = await admit(
        limiter, key, tokens=500
    )  # bigger than the limit: an empty window admits it
    assert first.headers["x-ratelimit-limit-tokens"] == "100"
    assert first.headers["x-ratelimit-remaining-tokens"] == "100"
    await client.set(f"{rate_prefix(key.id)}:tok:{minute}", 90, ex=120)
    assert (await admit(limiter, key, tokens=5)).headers["x-ratelimit-remaining-tokens"] in {
        "10",
        "9",  # the minute turned over: 90 of the previous minute, slightly less than whole
    }
    with pytest.raises(RateLimited) as caught:
        await admit(limiter, key, tokens=20)
    assert caught.value.body()["error"]["type"] == "tokens"
    assert "tokens per minute" in caught.value.message
    assert caught.value.headers()["x-ratelimit-remaining-tokens"] in {"10", "9"}
    with pytest.raises(RateLimited):  # one over the limit waits for an empty window
        await admit(limiter, key, tokens=500)


async def test_a_budget_reserves_estimates_and_refuses_when_spent_and_reserved(
    limiter, client, metrics
) -> None:
    key = api_key(budget=Budget(period="day", limit_usd=1.0))
    first = await admit(limiter, key, nusd=600_000_000)
    second = await admit(limiter, key, nusd=600_000_000)  # 0.6 reserved < 1.0: admitted
    assert first.reserved_nusd == second.reserved_nusd == 600_000_000
    assert first.budget_key is not None and first.budget_key.startswith(budget_key(key.id, ""))
    stored = await client.hgetall(first.budget_key)
    assert int(stored[b"reserved"]) == 1_200_000_000
    ttl = await client.ttl(first.budget_key)
    assert 7 * 86400 < ttl <= 8 * 86400  # the period's end plus 7 days
    with pytest.raises(BudgetExceeded) as caught:
        await admit(limiter, key, nusd=1)
    error = caught.value
    assert error.status == 429 and error.code == "budget_exceeded"
    assert error.body()["error"]["type"] == "insufficient_quota"
    tomorrow = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(time.time() + 86400))
    assert f"resets at {tomorrow}" in error.message
    seconds_left = 86400 - time.time() % 86400
    assert abs(int(error.headers()["Retry-After"]) - seconds_left) <= 2
    assert metrics.rejections.labels(key.name, "budget")._value.get() == 1
    # Settled at their real cost: the reservations go, the spend stays, and it admits again.
    ledger = Ledger(client, metrics=metrics)
    for admission in (first, second):
        ledger.settle(admission, key.id, key.name, [_charge(cost_nusd=100_000_000)])
    assert await ledger.flush()
    stored = await client.hgetall(first.budget_key)
    assert (int(stored[b"spent"]), int(stored[b"reserved"])) == (200_000_000, 0)
    assert (await admit(limiter, key, nusd=600_000_000)).checked


async def test_a_monthly_budget_resets_on_the_first_of_next_month(limiter, client) -> None:
    key = api_key(budget=Budget(period="month", limit_usd=0.0))
    with pytest.raises(BudgetExceeded) as caught:
        await admit(limiter, key, nusd=1)
    now = time.gmtime()
    year, month = (now.tm_year + 1, 1) if now.tm_mon == 12 else (now.tm_year, now.tm_mon + 1)
    assert f"resets at {year:04d}-{month:02d}-01T00:00:00Z" in caught.value.message
    assert "monthly" in caught.value.message


def utc(text: str) -> int:
    """Unix seconds of a UTC time written ``2099-12-31T23:59:30``."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))


@pytest.mark.parametrize(
    ("at", "day", "day_ends", "month", "month_ends"),
    [
        (utc("2099-12-31T23:59:59") + 0.999, "2099-12-31", "2100-01-01", "2099-12", "2100-01-01"),
        (utc("2100-01-01T00:00:00"), "2100-01-01", "2100-01-02", "2100-01", "2100-02-01"),
        (utc("2096-02-28T23:59:59"), "2096-02-28", "2096-02-29", "2096-02", "2096-03-01"),
        (utc("2096-02-29T00:00:00"), "2096-02-29", "2096-03-01", "2096-02", "2096-03-01"),
        (utc("2097-02-28T12:00:00"), "2097-02-28", "2097-03-01", "2097-02", "2097-03-01"),
        (utc("2026-04-30T23:59:59"), "2026-04-30", "2026-05-01", "2026-04", "2026-05-01"),
        (utc("2026-05-01T00:00:00"), "2026-05-01", "2026-05-02", "2026-05", "2026-06-01"),
    ],
)
def test_periods_are_utc_days_and_months(
    at: float, day: str, day_ends: str, month: str, month_ends: str
) -> None:
    periods = Calendar(lambda: at)
    assert periods.day() == day
    assert periods.period("day").id == day
    assert periods.period("day").ends_at == utc(f"{day_ends}T00:00:00")
    assert periods.period("month").id == month
    assert periods.period("month").ends_at == utc(f"{month_ends}T00:00:00")


def test_one_calendar_follows_its_clock_across_midnight() -> None:
    now = [utc("2099-12-31T23:59:59") + 0.5]
    periods = Calendar(lambda: now[0])
    assert (periods.day(), periods.period("month").id) == ("2099-12-31", "2099-12")
    now[0] += 0.5
    assert (periods.day(), periods.period("month").id) == ("2100-01-01", "2100-01")


async def test_budgets_reset_at_the_utc_boundary_of_their_period(client, metrics) -> None:
    """Spent up in one period, a key is refused until the next begins (the message and
    Retry-After say when), and admitted the moment it does, into the new period's hash."""
    now = [utc("2099-12-31T23:59:30")]
    limiter = Limiter(client, metrics=metrics, clock=lambda: now[0])
    monthly = api_key("key_m1", budget=Budget(period="month", limit_usd=1.0))
    daily = api_key("key_d1", budget=Budget(period="day", limit_usd=1.0))
    await client.hset(budget_key(monthly.id, "2099-12"), "spent", 2 * USD)
    await client.hset(budget_key(daily.id, "2099-12-31"), "spent", 2 * USD)
    for key, words in ((monthly, "monthly"), (daily, "daily")):
        with pytest.raises(BudgetExceeded) as caught:
            await admit(limiter, key, nusd=1)
        assert f"{words} budget" in caught.value.message
        assert "resets at 2100-01-01T00:00:00Z" in caught.value.message
        assert caught.value.retry_after_s == 30
    now[0] = utc("2100-01-01T00:00:00")
    for key, period in ((monthly, "2100-01"), (daily, "2100-01-01")):
        admission = await admit(limiter, key, nusd=7)
        assert admission.budget_key == budget_key(key.id, period)
        assert int(await client.hget(admission.budget_key, "reserved")) == 7
    # Mid-month: the daily budget resets at midnight, the monthly one on the 1st.
    now[0] = utc("2100-01-15T23:59:59") + 0.5
    await client.hset(budget_key(monthly.id, "2100-01"), "spent", 2 * USD)
    await client.hset(budget_key(daily.id, "2100-01-15"), "spent", 2 * USD)
    with pytest.raises(BudgetExceeded) as day_over:
        await admit(limiter, daily, nusd=1)
    assert "resets at 2100-01-16T00:00:00Z" in day_over.value.message
    assert day_over.value.retry_after_s == 1  # half a second, rounded up
    with pytest.raises(BudgetExceeded) as month_over:
        await admit(limiter, monthly, nusd=1)
    assert "resets at 2100-02-01T00:00:00Z" in month_over.value.message
    assert month_over.value.retry_after_s == 16 * 86400 + 1


async def test_past_the_soft_limit_answers_carry_a_warning(limiter, client, metrics) -> None:
    key = api_key(budget=Budget(period="day", limit_usd=1.0, soft_limit_usd=0.5))
    quiet = await admit(limiter, key, nusd=10)
    assert BUDGET_WARNING_HEADER not in quiet.headers and not quiet.warning
    assert quiet.budget_key is not None
    await client.hset(quiet.budget_key, "spent", 500_000_000)
    warned = await admit(limiter, key, nusd=10)
    assert warned.warning
    assert "soft_limit_usd=0.50" in warned.headers[BUDGET_WARNING_HEADER]
    assert "resets=" in warned.headers[BUDGET_WARNING_HEADER]
    assert metrics.budget_warnings.labels(key.name)._value.get() == 1


async def test_a_script_flushed_from_redis_is_loaded_again(limiter, client) -> None:
    key = api_key(rpm=5)
    await admit(limiter, key)
    await client.script_flush()
    assert (await admit(limiter, key)).headers["x-ratelimit-remaining-requests"] == "3"


async def test_redis_down_open_admits_unchecked_closed_refuses(
    limiter, redis_server, metrics, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.accounts")
    key = api_key(rpm=1, budget=Budget(period="day", limit_usd=1.0))
    redis_server.stop()
    admission = await admit(limiter, key, nusd=5, mode="open")
    assert not admission.checked and admission.reserved_nusd == 0
    assert admission.budget_key is not None  # what it spends is still settled there
    assert metrics.store_errors.labels("admit")._value.get() == 1
    assert metrics.unchecked._value.get() == 1
    with pytest.raises(LimitsUnavailable) as caught:
        await admit(limiter, key, mode="closed")
    assert caught.value.status == 503 and caught.value.code == "limits_unavailable"
    assert caught.value.headers()["Retry-After"] == "1"
    redis_server.start()

    async def checked() -> bool:
        try:
            return (await admit(limiter, key, mode="closed")).checked
        except LimitsUnavailable:
            return False

    await eventually_value(checked, bool, timeout_s=5.0, what="admissions checked again")
    said = [r.getMessage() for r in caplog.records if r.name == "gateway.accounts"]
    down = [m for m in said if m.startswith("limits store unavailable")]
    assert len(down) == 1, said  # logged once per outage, however many requests it refused
    assert "limits.on_store_error" in down[0]
    assert [m for m in said if m.startswith("limits store reachable again")], said


def test_reset_durations_read_like_openais() -> None:
    assert [duration(ms) for ms in (0, 250, 1000, 12_500, 60_000, 65_250)] == [
        "0ms",
        "250ms",
        "1s",
        "12.5s",
        "1m0s",
        "1m5.25s",
    ]


def _charge(**fields: int) -> Charge:
    values = {"prompt_tokens": 0, "completion_tokens": 0, "cost_nusd": 0, "cloud_nusd": 0}
    values.update(fields)
    return Charge(tier="cloud", model="cloud-model", requests=1, **values)


async def test_a_budget_refusal_carries_the_rate_limit_headers(limiter) -> None:
    """Every 429 a key gets says where its per-minute limits stand, as its answers do."""
    key = api_key(rpm=100, tpm=5000, budget=Budget(period="day", limit_usd=0.0))
    with pytest.raises(BudgetExceeded) as caught:
        await admit(limiter, key, nusd=1)
    headers = caught.value.headers()
    assert headers["x-ratelimit-limit-requests"] == "100"
    assert headers["x-ratelimit-remaining-requests"] == "100"  # a refusal is not counted
    assert headers["x-ratelimit-limit-tokens"] == "5000"
    assert headers["x-should-retry"] == "false" and int(headers["Retry-After"]) >= 1
