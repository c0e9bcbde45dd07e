"""``python -m gateway usage``: the table and ``--json`` from a real redis-server's ledger;
bad input exits 2, an unreachable Redis 1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

import pytest
import redis.asyncio as aioredis

from gateway.redis_client import close_client, redis_client
from tests.fixtures.redis import RedisServer
from tests.gateway.accounts.usage_ledger import write_key, write_sample_usage, write_usage
from tests.helpers import run_cli
from tests.scripted import unused_port

pytestmark = pytest.mark.redis

D1, D2 = date(2026, 5, 1), date(2026, 5, 2)
KA, KB = "key_0000000000aa", "key_0000000000bb"
RANGE = ("--start", "2026-05-01", "--end", "2026-05-02")


@pytest.fixture
async def ledger(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """The sample usage (KA on D1 and D2, KB on D2) and both keys' records."""
    client = redis_client(redis_server.url, max_connections=2, timeout_s=2.0)
    await write_key(client, KA, "mobile-free")
    await write_key(client, KB, "desktop")
    await write_sample_usage(client, KA, KB, D1, D2, edge_model="small")
    yield client
    await close_client(client)


def env(url: str) -> dict[str, str]:
    return {"REDIS_URL": url, "REDIS_CLUSTER": "", "GATEWAY_KEY_STORE": ""}


def cells(table: str, first: str) -> list[str]:
    """The cells of the table row that starts with ``first``."""
    (line,) = [line for line in table.splitlines() if line.startswith(first + " ")]
    return line.split()


async def test_the_table_shows_tiers_cost_and_saving(
    ledger: aioredis.Redis, redis_server: RedisServer
) -> None:
    done = run_cli("usage", *RANGE, env=env(redis_server.url))
    assert done.returncode == 0, done.stderr
    table = done.stdout
    assert "Usage 2026-05-01 .. 2026-05-02 (UTC), 2 key(s) with usage" in table
    assert cells(table, "KEY") == [
        "KEY", "NAME", "TIER", "REQUESTS", "PROMPT_TOK", "COMPL_TOK",
        "COST_USD", "CLOUD_EQ_USD", "SAVED_USD",
    ]  # fmt: skip
    #                         tier    requests prompt compl cost        cloud       saved
    assert cells(table, KA) == [KA, "mobile-free", "edge", "3", "300", "150",
                                "0.000000", "0.000300", "0.000300"]  # fmt: skip
    assert cells(table, "ALL") == ["ALL", "edge", "3", "300", "150",
                                   "0.000000", "0.000300", "0.000300"]  # fmt: skip
    lines = table.splitlines()
    total = lines[lines.index(next(x for x in lines if x.startswith("ALL"))) + 2]
    assert total.split() == ["total", "6", "600", "300", "0.000300", "0.000600", "0.000300"]
    assert "Saved: $0.000300 of $0.000600 had the cloud answered everything (50.0%)." in table


async def test_json_is_the_api_body(ledger: aioredis.Redis, redis_server: RedisServer) -> None:
    done = run_cli("usage", *RANGE, "--key", KA, "--json", env=env(redis_server.url))
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert (body["object"], body["start"], body["end"]) == ("usage", "2026-05-01", "2026-05-02")
    assert [(d["key_id"], d["key_name"]) for d in body["data"]] == [(KA, "mobile-free")]
    assert body["total"]["requests"] == 4
    assert body["total"]["cost_usd"] == 0.0001
    assert body["total"]["cloud_equivalent_usd"] == 0.0004
    assert body["total"]["saved_usd"] == 0.0003
    assert body["total"]["saved_share"] == 0.75
    assert body["tiers"]["edge"]["saved_usd"] == 0.0003


async def test_period_day_reads_today(redis_server: RedisServer) -> None:
    client = redis_client(redis_server.url, max_connections=2, timeout_s=2.0)
    try:
        today = datetime.now(UTC).date()
        await write_usage(client, KB, today, "edge", "small", requests=7, prompt_tokens=1,
                          completion_tokens=1, cost_nusd=0, cloud_nusd=5)  # fmt: skip
    finally:
        await close_client(client)
    done = run_cli("usage", "--period", "day", "--json", env=env(redis_server.url))
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    # (A run just across UTC midnight would read the next day: the start names the day read.)
    if body["start"] == today.isoformat():
        assert body["total"]["requests"] == 7
        assert body["data"][0]["key_name"] is None  # no record stored for KB here


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--start", "2026-13-01"), "--start: start must be a date YYYY-MM-DD"),
        (("--start", "2026-05-02", "--end", "2026-05-01"), "--end: end (2026-05-01) is before"),
        (("--start", "2025-01-01", "--end", "2026-05-01"), "at most 400"),
        (("--period", "day", "--end", "2026-05-01"), "--period: Give either period"),
        (("--key", "key_x}"), "--key: key must look like key_0123456789ab"),
        (("--period", "week"), "invalid choice: 'week'"),
    ],
)
def test_bad_input_exits_2(args: tuple[str, ...], says: str) -> None:
    # Checked before Redis is asked: the URL leads nowhere.
    done = run_cli("usage", *args, env=env(f"redis://127.0.0.1:{unused_port()}/0"))
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert done.stdout == ""


def test_without_redis_url_exits_2() -> None:
    done = run_cli("usage", env=env(""))
    assert done.returncode == 2
    assert "REDIS_URL" in done.stderr


def test_unreachable_redis_exits_1() -> None:
    done = run_cli("usage", "--period", "month", env=env(f"redis://127.0.0.1:{unused_port()}/0"))
    assert done.returncode == 1, done.stderr
    assert "error: The usage ledger (Redis) is unavailable" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
