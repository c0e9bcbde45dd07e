"""``GET /v1/usage`` on the real gateway app over a real redis-server: admin only, bad
parameters named, the report's JSON shape, and clear answers without the ledger or Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway.redis_client import close_client, redis_client
from tests.conftest import GatewayFactory, RunningGateway
from tests.fixtures.redis import RedisServer
from tests.gateway.accounts.usage_ledger import write_key, write_sample_usage, write_usage
from tests.helpers import policy_yaml

pytestmark = pytest.mark.redis

ADMIN = "admin-secret-1"
CLIENT_KEY = "client-key-1"
KA, KB = "key_0000000000aa", "key_0000000000bb"
D1, D2 = date(2026, 6, 1), date(2026, 6, 2)
POLICY = policy_yaml([("http://127.0.0.1:1", "edge-model")], [("http://127.0.0.1:2", "big")])

Start = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
def start(make_gateway: GatewayFactory, redis_server: RedisServer) -> Start:
    """A gateway with the key store on this test's Redis, unless settings say otherwise."""

    async def run(**settings: Any) -> RunningGateway:
        options: dict[str, Any] = {
            "redis_url": redis_server.url,
            "key_store": True,
            "admin_key": ADMIN,
            **settings,
        }
        return await make_gateway(POLICY, health_checks=False, **options)

    return run


@pytest.fixture
async def ledger(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(redis_server.url, max_connections=2, timeout_s=2.0)
    await write_key(client, KA, "mobile-free")
    await write_sample_usage(client, KA, KB, D1, D2, edge_model="edge-model")
    yield client
    await close_client(client)


async def get(
    gateway: RunningGateway, query: str = "", *, token: str | None = ADMIN
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/v1/usage{query}", headers=headers) as response:
            return response.status, await response.json(), dict(response.headers)


def usage(requests: int, prompt: int, completion: int, cost: float, cloud: float) -> dict[str, Any]:
    saved = round(cloud - cost, 9)
    return {
        "requests": requests,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost_usd": cost,
        "cloud_equivalent_usd": cloud,
        "saved_usd": saved,
        "saved_share": round(saved / cloud, 6) if cloud else None,
    }


async def test_the_report_per_key_tier_and_model(start: Start, ledger: aioredis.Redis) -> None:
    gateway = await start()
    status, body, _ = await get(gateway, "?start=2026-06-01&end=2026-06-02")
    assert status == 200, body
    edge_a = usage(3, 300, 150, 0.0, 0.0003)
    cloud_a = usage(1, 100, 50, 0.0001, 0.0001)
    cloud_b = usage(2, 200, 100, 0.0002, 0.0002)
    assert body == {
        "object": "usage",
        "start": "2026-06-01",
        "end": "2026-06-02",
        "data": [
            {
                "key_id": KA,
                "key_name": "mobile-free",
                "tiers": {"edge": edge_a, "cloud": cloud_a},
                "models": [
                    {"tier": "cloud", "model": "big", **cloud_a},
                    {"tier": "edge", "model": "edge-model", **edge_a},
                ],
                "days": [{"date": "2026-06-01", **edge_a}, {"date": "2026-06-02", **cloud_a}],
                "total": usage(4, 400, 200, 0.0001, 0.0004),
            },
            {
                "key_id": KB,
                "key_name": None,
                "tiers": {"edge": usage(0, 0, 0, 0.0, 0.0), "cloud": cloud_b},
                "models": [{"tier": "cloud", "model": "big", **cloud_b}],
                "days": [{"date": "2026-06-02", **cloud_b}],
                "total": cloud_b,
            },
        ],
        "tiers": {"edge": edge_a, "cloud": usage(3, 300, 150, 0.0003, 0.0003)},
        "total": usage(6, 600, 300, 0.0003, 0.0006),
    }
    assert body["total"]["saved_usd"] == 0.0003 and body["total"]["saved_share"] == 0.5
    # One key, one day.
    status, body, _ = await get(gateway, f"?key_id={KA}&start=2026-06-02")
    assert status == 200, body
    assert (body["start"], body["end"]) == ("2026-06-02", datetime.now(UTC).date().isoformat())
    assert [d["key_id"] for d in body["data"]] == [KA]
    assert body["total"] == cloud_a


async def test_period_month_reads_this_month(
    start: Start, redis_server: RedisServer, ledger: aioredis.Redis
) -> None:
    today = datetime.now(UTC).date()
    await write_usage(ledger, KB, today, "edge", "edge-model", requests=5, prompt_tokens=5,
                      completion_tokens=5, cost_nusd=0, cloud_nusd=4_000)  # fmt: skip
    gateway = await start()
    status, body, _ = await get(gateway, "?period=month")
    assert status == 200, body
    end = date.fromisoformat(body["end"])
    assert body["start"] == end.replace(day=1).isoformat()
    assert end in {today, today + timedelta(days=1)}  # a run across UTC midnight reads the next
    if end == today:
        assert body["tiers"]["edge"]["requests"] == 5
        assert body["total"]["saved_usd"] == 0.000004


@pytest.mark.parametrize(
    ("token", "admin_key", "status", "code"),
    [
        (None, ADMIN, 401, "invalid_api_key"),
        ("wrong", ADMIN, 401, "invalid_api_key"),
        (CLIENT_KEY, ADMIN, 401, "invalid_api_key"),  # a client key is no admin key
        (ADMIN, None, 403, "permission_denied"),  # the admin API is off
    ],
)
async def test_admins_only(
    start: Start, token: str | None, admin_key: str | None, status: int, code: str
) -> None:
    gateway = await start(admin_key=admin_key, api_keys=frozenset({CLIENT_KEY}))
    got, body, _ = await get(gateway, "?period=day", token=token)
    assert (got, body["error"]["code"]) == (status, code), body


async def test_the_admin_key_passes_the_client_key_check(start: Start) -> None:
    gateway = await start(api_keys=frozenset({CLIENT_KEY}))
    status, body, _ = await get(gateway, "?period=day")
    assert status == 200, body
    assert body["data"] == [] and body["total"]["requests"] == 0


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("?start=2026-02-30", "start"),
        ("?start=june", "start"),
        ("?end=2026-06-01T00:00:00", "end"),
        ("?start=2026-06-02&end=2026-06-01", "end"),
        ("?start=2025-01-01&end=2026-06-01", "end"),
        ("?period=week", "period"),
        ("?period=day&start=2026-06-01", "period"),
        ("?key_id=key_%7Bx%7D", "key_id"),
        ("?start=2026-06-01&start=2026-06-02", "start"),
        ("?begin=2026-06-01", "begin"),
    ],
)
async def test_bad_parameters_are_named(start: Start, query: str, param: str) -> None:
    gateway = await start()
    status, body, _ = await get(gateway, query)
    assert status == 400, body
    assert body["error"]["param"] == param
    assert body["error"]["type"] == "invalid_request_error"


async def test_without_the_key_store_there_is_no_ledger(start: Start) -> None:
    gateway = await start(key_store=False)
    status, body, _ = await get(gateway, "?period=day")
    assert status == 409, body
    assert body["error"]["code"] == "key_store_disabled"
    assert "GATEWAY_KEY_STORE=redis" in body["error"]["message"]


async def test_redis_down_is_503_with_retry_after(start: Start, redis_server: RedisServer) -> None:
    gateway = await start()
    redis_server.stop()
    status, body, headers = await get(gateway, "?period=month")
    assert status == 503, body
    assert body["error"]["code"] == "usage_store_unavailable"
    assert headers["Retry-After"] == "1"
