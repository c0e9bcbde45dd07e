"""Two ``python -m gateway serve`` processes sharing one redis-server: a key's request
limit holds across both (within one request), and concurrent streamed requests through
both cannot overspend its budget by more than one request's cost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from gateway.accounts.layout import budget_key
from gateway.accounts.model import Budget
from gateway.accounts.store import KeyStore
from gateway.redis_client import close_client, redis_client
from tests.fixtures.redis import RedisServer, free_port
from tests.helpers import ServeProcess, eventually_value, policy_yaml, serve_process
from tests.scripted import Script, ScriptedUpstream

pytestmark = pytest.mark.redis

PRICE = {"prompt_usd_per_1m": 0, "completion_usd_per_1m": 1000}
"""1e6 nusd per completion token on both tiers: 5 tokens cost what max_tokens 5 reserves."""


@asynccontextmanager
async def two_gateways(
    tmp_path: Path, redis_server: RedisServer, edge: ScriptedUpstream
) -> AsyncIterator[tuple[ServeProcess, ServeProcess]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        policy_yaml([(edge.url, "edge-model")], [], pricing={"edge": PRICE, "cloud": PRICE})
    )
    env = {
        "GATEWAY_POLICY": str(policy),
        "REDIS_URL": redis_server.url,
        "REDIS_CLUSTER": "",
        "GATEWAY_KEY_STORE": "redis",
        "GATEWAY_API_KEYS": "",
    }
    async with (
        serve_process({**env, "GATEWAY_PORT": str(free_port())}) as one,
        serve_process({**env, "GATEWAY_PORT": str(free_port())}) as other,
    ):
        yield one, other


async def status_of(
    http: aiohttp.ClientSession, gateway: ServeProcess, plain: str, **body: object
) -> tuple[int, str]:
    payload = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], **body}
    headers = {"Authorization": f"Bearer {plain}"}
    async with http.post(gateway.url + "/v1/chat/completions", json=payload, headers=headers) as r:
        return r.status, await r.text()


async def test_a_request_limit_holds_across_two_gateways(
    tmp_path: Path,
    redis_server: RedisServer,
    upstreams: Callable[[str], Awaitable[ScriptedUpstream]],
) -> None:
    edge = await upstreams("edge-model")
    client = redis_client(redis_server.url, max_connections=4, timeout_s=1.0)
    try:
        _, plain = await KeyStore(client).create(name="shared", rpm=5)
    finally:
        await close_client(client)
    async with two_gateways(tmp_path, redis_server, edge) as (one, other):
        async with aiohttp.ClientSession() as http:
            results = await asyncio.gather(
                *(status_of(http, (one, other)[i % 2], plain) for i in range(20))
            )
    statuses = [status for status, _ in results]
    admitted = statuses.count(200)
    assert 5 <= admitted <= 6, statuses  # the limit, give or take one request
    assert statuses.count(429) == 20 - admitted
    refused = next(text for status, text in results if status == 429)
    assert "rate_limit_exceeded" in refused


async def test_concurrent_streams_through_two_gateways_overspend_by_one_request_at_most(
    tmp_path: Path,
    redis_server: RedisServer,
    upstreams: Callable[[str], Awaitable[ScriptedUpstream]],
) -> None:
    edge = await upstreams("edge-model")
    edge.script = Script(chunk_delay_s=0.1)  # every request is admitted before one settles
    client = redis_client(redis_server.url, max_connections=4, timeout_s=1.0)
    try:
        key, plain = await KeyStore(client).create(
            name="metered", budget=Budget(period="day", limit_usd=0.0225)
        )
        async with two_gateways(tmp_path, redis_server, edge) as (one, other):
            async with aiohttp.ClientSession() as http:
                results = await asyncio.gather(
                    *(
                        status_of(http, (one, other)[i % 2], plain, stream=True, max_tokens=5)
                        for i in range(10)
                    )
                )
            hash_key = budget_key(key.id, time.strftime("%Y-%m-%d", time.gmtime()))

            async def budget() -> tuple[int, int]:
                raw = await client.hgetall(hash_key)
                return int(raw.get(b"spent", 0)), int(raw.get(b"reserved", 0))

            spent, _ = await eventually_value(
                budget, lambda b: b[1] == 0, what="every reservation released"
            )
    finally:
        await close_client(client)
    served = [text for status, text in results if status == 200]
    refused = [text for status, text in results if status == 429]
    assert len(served) + len(refused) == 10
    assert all("[DONE]" in text for text in served)
    assert all("budget_exceeded" in text for text in refused)
    # Admitted while spent + reserved < 22.5e6, each reserving 5e6: five of them.
    assert len(served) == 5
    assert spent == len(served) * 5_000_000  # each answer's 5 tokens, at 1e6 nusd
    assert spent <= 22_500_000 + 5_000_000
