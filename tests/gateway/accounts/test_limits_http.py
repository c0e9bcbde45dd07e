"""Limits, budgets and cost through the gateway, with keys in a real redis-server and
scripted nodes of known usage: 429s in OpenAI's shape, x-ratelimit-* headers on answers,
cost and tokens equal to the nodes' own usage (streamed, non-streamed, continued, broken,
abandoned), and Redis going away (open: served and replayed; closed: 503)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis

from gateway.accounts.layout import budget_key, usage_key
from gateway.accounts.model import ApiKey, Budget
from gateway.accounts.store import KeyStore
from gateway.redis_client import close_client, redis_client
from gateway.state import ACCOUNTING
from tests.conftest import GatewayFactory, RunningGateway, TwoTiers, TwoTiersFactory
from tests.fixtures.redis import RedisServer
from tests.helpers import HI, eventually_value, policy_yaml, scrape_metrics, sdk
from tests.scripted import Script, unused_port

pytestmark = pytest.mark.redis

RATE_HEADERS = tuple(
    f"x-ratelimit-{what}-{unit}"
    for unit in ("requests", "tokens")
    for what in ("limit", "remaining", "reset")
)
"""OpenAI's names, which its SDKs and clients read."""

PRICING = {
    "edge": {"prompt_usd_per_1m": 1, "completion_usd_per_1m": 2},
    "cloud": {"prompt_usd_per_1m": 10, "completion_usd_per_1m": 20},
}
"""In nusd per token: edge 1000 / 2000, cloud 10000 / 20000."""
NUSD_PER_TOKEN = {"edge": (1000, 2000), "cloud": (10_000, 20_000)}
TIMEOUTS = "{connect: 1, first_token: 2, idle: 2, total: 10}"


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def cost(tier: str, prompt: int, completion: int) -> int:
    per_prompt, per_completion = NUSD_PER_TOKEN[tier]
    return prompt * per_prompt + completion * per_completion


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(redis_server.url, max_connections=8, timeout_s=1.0)
    yield client  # type: ignore[misc]
    await close_client(client)


@pytest.fixture
def new_key(redis: aioredis.Redis) -> Callable[..., Awaitable[tuple[ApiKey, str]]]:
    async def create(**fields: Any) -> tuple[ApiKey, str]:
        return await KeyStore(redis).create(name=fields.pop("name", "tenant-a"), **fields)

    return create


@pytest.fixture
def keyed(
    redis_server: RedisServer, two_tiers: TwoTiersFactory
) -> Callable[..., Awaitable[TwoTiers]]:
    """A two-tier gateway with GATEWAY_KEY_STORE=redis and :data:`PRICING`."""

    async def start(*, pricing: object = PRICING, **policy: Any) -> TwoTiers:
        settings = {"redis_url": redis_server.url, "key_store": True}
        return await two_tiers(settings=settings, pricing=pricing, timeouts=TIMEOUTS, **policy)

    return start


@pytest.fixture
def edge_only(
    redis_server: RedisServer, make_gateway: GatewayFactory
) -> Callable[[str], Awaitable[RunningGateway]]:
    """A gateway with GATEWAY_KEY_STORE=redis and :data:`PRICING` whose edge node is at the
    URL given and whose cloud node nothing answers."""

    async def start(edge_url: str) -> RunningGateway:
        policy = policy_yaml(
            [(edge_url, "edge-model")],
            [(f"http://127.0.0.1:{unused_port()}", "cloud-model")],
            timeouts=TIMEOUTS,
            pricing=PRICING,
        )
        return await make_gateway(
            policy, health_checks=False, redis_url=redis_server.url, key_store=True
        )

    return start


async def usage(redis: aioredis.Redis, key_id: str) -> dict[str, int]:
    raw = await redis.hgetall(usage_key(key_id, today()))
    return {k.decode(): int(v) for k, v in raw.items()}


async def settled(redis: aioredis.Redis, key_id: str, requests: int) -> dict[str, int]:
    """The key's usage hash once it counts ``requests`` requests (the ledger writes
    every 50 ms)."""

    async def read() -> dict[str, int]:
        return await usage(redis, key_id)

    return await eventually_value(
        read,
        lambda u: sum(v for k, v in u.items() if k.endswith("|requests")) == requests,
        what=f"{requests} settled requests",
    )


async def budget_of(redis: aioredis.Redis, key: ApiKey) -> tuple[int, int]:
    assert key.budget is not None
    period = today() if key.budget.period == "day" else today()[:7]
    raw = await redis.hgetall(budget_key(key.id, period))
    return int(raw.get(b"spent", 0)), int(raw.get(b"reserved", 0))


async def test_requests_per_minute_429_in_openais_shape(keyed, new_key) -> None:
    _, _, gateway = await keyed()
    _, plain = await new_key(rpm=2, tpm=100_000)
    async with sdk(gateway, api_key=plain) as client:
        answer = await client.chat.completions.with_raw_response.create(model="auto", messages=HI)
        assert [name for name in RATE_HEADERS if name not in answer.headers] == []
        assert answer.headers["x-ratelimit-limit-requests"] == "2"
        assert answer.headers["x-ratelimit-remaining-requests"] == "1"
        assert answer.headers["x-ratelimit-limit-tokens"] == "100000"
        assert answer.headers["x-ratelimit-reset-requests"].endswith("s")  # 59.9s, 1m0.1s
        stream = await client.chat.completions.with_raw_response.create(
            model="auto", messages=HI, stream=True
        )
        assert stream.headers["x-ratelimit-remaining-requests"] == "0"
        _ = [chunk async for chunk in stream.parse()]
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="auto", messages=HI)
    error = caught.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert isinstance(error.body, dict)  # OpenAI's error shape: message, type, param, code
    assert error.body["message"].startswith("Rate limit reached on requests per minute")
    assert {k: v for k, v in error.body.items() if k != "message"} == {
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert 1 <= int(error.response.headers["Retry-After"]) <= 120
    assert [name for name in RATE_HEADERS if name not in error.response.headers] == []
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.response.headers["x-ratelimit-limit-tokens"] == "100000"
    metrics = await scrape_metrics(gateway)
    rejected = "gateway_limiter_rejections_total"
    assert metrics.get(rejected, key_name="tenant-a", reason="requests") == 1
    assert plain not in str(metrics.label_values())  # never the key itself


async def test_a_key_without_limits_gets_no_rate_headers(keyed, new_key, redis) -> None:
    _, _, gateway = await keyed()
    key, plain = await new_key()
    async with sdk(gateway, api_key=plain) as client:
        answer = await client.chat.completions.with_raw_response.create(model="auto", messages=HI)
    assert not [h for h in answer.headers if h.startswith("x-ratelimit")]
    await settled(redis, key.id, 1)  # settled all the same: the ledger has every key


async def test_cost_equals_the_nodes_usage_streamed_and_not(keyed, new_key, redis) -> None:
    _, _, gateway = await keyed()
    key, plain = await new_key(budget=Budget(period="day", limit_usd=10.0))
    async with sdk(gateway, api_key=plain) as client:
        await client.chat.completions.create(model="auto", messages=HI)  # edge, non-streamed
        stream = await client.chat.completions.create(
            model="cloud", messages=HI, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    shown = chunks[-1].usage
    assert shown is not None
    # The scripted nodes report prompt = 5 per message, completion = one per chunk (5).
    u = await settled(redis, key.id, 2)
    assert u["edge|edge-model|prompt_tokens"] == 5 and u["edge|edge-model|completion_tokens"] == 5
    assert u["cloud|cloud-model|prompt_tokens"] == shown.prompt_tokens == 5
    assert u["cloud|cloud-model|completion_tokens"] == shown.completion_tokens == 5
    assert u["edge|edge-model|cost_nusd"] == cost("edge", 5, 5)
    assert u["cloud|cloud-model|cost_nusd"] == cost("cloud", 5, 5)
    # What the same tokens would have cost on the cloud: the edge answer's saving.
    assert u["edge|edge-model|cloud_nusd"] == cost("cloud", 5, 5)
    assert u["cloud|cloud-model|cloud_nusd"] == cost("cloud", 5, 5)
    spent, _ = await eventually_value(
        lambda: budget_of(redis, key), lambda b: b[1] == 0, what="reservations released"
    )
    assert spent == cost("edge", 5, 5) + cost("cloud", 5, 5)
    metrics = await scrape_metrics(gateway)
    labels = {"key_name": "tenant-a", "tier": "edge", "model": "edge-model"}
    assert metrics.get("gateway_key_requests_total", **labels) == 1
    assert metrics.get("gateway_key_tokens_total", **labels, kind="completion") == 5
    assert metrics.get("gateway_key_cost_usd_total", **labels) == pytest.approx(
        cost("edge", 5, 5) / 1e9
    )
    assert metrics.get("gateway_key_cloud_equivalent_usd_total", **labels) == pytest.approx(
        cost("cloud", 5, 5) / 1e9
    )


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_a_continued_answer_charges_each_tier_its_tokens(
    keyed, new_key, redis, stream
) -> None:
    edge, cloud, gateway = await keyed()
    edge.script = Script(behaviour="cut", cut_after=2)  # two tokens, then the line drops
    cloud.script = Script(chunks=(" the", " upstream", "."))
    key, plain = await new_key(budget=Budget(period="day", limit_usd=10.0))
    async with sdk(gateway, api_key=plain) as client:
        if stream:
            chunks = [
                chunk
                async for chunk in await client.chat.completions.create(
                    model="auto",
                    messages=HI,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            ]
            shown = chunks[-1].usage
        else:
            shown = (await client.chat.completions.create(model="auto", messages=HI)).usage
    assert shown is not None
    u = await settled(redis, key.id, 1)
    assert u["cloud|cloud-model|requests"] == 1 and "edge|edge-model|requests" not in u
    # The cloud's own report, for the body it was sent (the prompt and the partial answer).
    sent = cloud.seen[-1].body["messages"]
    assert isinstance(sent, list)
    assert u["cloud|cloud-model|prompt_tokens"] == 5 * len(sent)
    assert u["cloud|cloud-model|completion_tokens"] == 3
    # The edge broke before reporting: its two chunks, and its prompt estimated.
    assert u["edge|edge-model|completion_tokens"] == 2
    edge_prompt = u["edge|edge-model|prompt_tokens"]
    assert edge_prompt > 0
    # What the client was told the answer used is what was charged.
    assert shown.completion_tokens == 5
    assert shown.prompt_tokens == edge_prompt + 5 * len(sent)
    spent, _ = await eventually_value(
        lambda: budget_of(redis, key), lambda b: b[1] == 0, what="reservations released"
    )
    assert spent == cost("edge", edge_prompt, 2) + cost("cloud", 5 * len(sent), 3)


async def test_a_broken_answer_still_charges_what_it_spent(
    redis, upstreams, edge_only, new_key
) -> None:
    edge = await upstreams("edge-model")
    edge.script = Script(behaviour="cut", cut_after=2)
    gateway = await edge_only(edge.url)
    key, plain = await new_key()
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "auto", "messages": HI, "stream": True},
            headers={"Authorization": f"Bearer {plain}"},
        )
        text = await response.text()
    assert '"error"' in text and "[DONE]" not in text
    u = await settled(redis, key.id, 1)
    assert u["edge|edge-model|requests"] == 1
    assert u["edge|edge-model|completion_tokens"] == 2
    assert u["edge|edge-model|cost_nusd"] == cost("edge", u["edge|edge-model|prompt_tokens"], 2)


async def test_a_client_that_leaves_mid_stream_pays_for_what_was_made(
    keyed, new_key, redis
) -> None:
    edge, _, gateway = await keyed()
    edge.script = Script(chunks=("tick ",) * 300, chunk_delay_s=0.02)
    key, plain = await new_key(budget=Budget(period="day", limit_usd=10.0))
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "auto", "messages": HI, "stream": True, "max_tokens": 400},
            headers={"Authorization": f"Bearer {plain}"},
        )
        received = 0
        async for _ in response.content:
            received += 1
            if received >= 10:
                break
        response.close()
    u = await settled(redis, key.id, 1)
    made = u["edge|edge-model|completion_tokens"]
    assert 5 <= made < 300  # what the edge made before the gateway closed it
    assert u["edge|edge-model|cost_nusd"] == cost("edge", u["edge|edge-model|prompt_tokens"], made)
    spent, _ = await eventually_value(
        lambda: budget_of(redis, key), lambda b: b[1] == 0, what="the reservation released"
    )
    assert spent == u["edge|edge-model|cost_nusd"]


async def test_over_budget_429_says_when_it_resets_and_soft_limit_warns(
    keyed, new_key, redis
) -> None:
    _, _, gateway = await keyed()
    key, plain = await new_key(budget=Budget(period="day", limit_usd=1.0, soft_limit_usd=0.5))
    async with sdk(gateway, api_key=plain) as client:
        quiet = await client.chat.completions.with_raw_response.create(model="auto", messages=HI)
        assert "x-gateway-budget-warning" not in quiet.headers
        await settled(redis, key.id, 1)
        await redis.hincrby(budget_key(key.id, today()), "spent", 600_000_000)  # 0.60 USD
        warned = await client.chat.completions.with_raw_response.create(model="auto", messages=HI)
        assert "soft_limit_usd=0.50" in warned.headers["x-gateway-budget-warning"]
        await settled(redis, key.id, 2)
        await redis.hincrby(budget_key(key.id, today()), "spent", 500_000_000)  # 1.10 USD
    # The SDK as users run it, retrying a 429 twice: told not to, it asks once.
    retrying = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=plain, max_retries=2)
    async with retrying:
        with pytest.raises(openai.RateLimitError) as caught:
            await retrying.chat.completions.create(model="auto", messages=HI, stream=True)
    error = caught.value
    assert error.code == "budget_exceeded"
    assert error.type == "insufficient_quota"
    assert error.response.headers["x-should-retry"] == "false"
    tomorrow = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(time.time() + 86400))
    assert f"resets at {tomorrow}" in error.message
    assert abs(int(error.response.headers["Retry-After"]) - (86400 - time.time() % 86400)) < 5
    metrics = await scrape_metrics(gateway)
    assert metrics.get("gateway_budget_warnings_total", key_name="tenant-a") == 1
    assert (
        metrics.get("gateway_limiter_rejections_total", key_name="tenant-a", reason="budget") == 1
    )


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_redis_stopped_open_serves_and_replays_closed_refuses(
    keyed, new_key, redis, redis_server, mode
) -> None:
    _, _, gateway = await keyed(limits={"on_store_error": mode})
    key, plain = await new_key(rpm=100, budget=Budget(period="day", limit_usd=1.0))
    async with sdk(gateway, api_key=plain) as client:
        await client.chat.completions.create(model="auto", messages=HI)  # the key is cached
        await settled(redis, key.id, 1)
        record = await redis.get(f"gw:key:{{{key.id}}}")
        redis_server.stop()
        if mode == "open":
            for stream in (False, True, False):
                answer = await client.chat.completions.with_raw_response.create(
                    model="auto", messages=HI, stream=stream
                )
                assert answer.http_response.status_code == 200
                if stream:
                    _ = [chunk async for chunk in answer.parse()]
        else:
            with pytest.raises(openai.APIStatusError) as caught:
                await client.chat.completions.create(model="auto", messages=HI)
            assert caught.value.status_code == 503
            assert caught.value.code == "limits_unavailable"
            assert caught.value.response.headers["Retry-After"] == "1"
    metrics = await scrape_metrics(gateway)
    assert metrics.get("gateway_limits_store_errors_total", operation="admit") >= 1
    redis_server.start()  # empty: what the gateway kept is written again
    assert record is not None
    await redis.set(f"gw:key:{{{key.id}}}", record)
    if mode == "open":
        u = await settled(redis, key.id, 3)
        assert u["edge|edge-model|completion_tokens"] == 15
        spent, reserved = await budget_of(redis, key)
        assert (spent, reserved) == (3 * cost("edge", 5, 5), 0)
        metrics = await scrape_metrics(gateway)
        assert metrics.get("gateway_limiter_unchecked_total") == 3


async def test_static_and_anonymous_traffic_is_in_the_ledger(
    redis_server, redis, two_tiers
) -> None:
    _, _, gateway = await two_tiers(
        settings={"redis_url": redis_server.url, "key_store": True, "api_keys": frozenset({"s"})},
        pricing=PRICING,
    )
    async with sdk(gateway, api_key="s") as client:
        await client.chat.completions.create(model="auto", messages=HI)
    u = await settled(redis, "_static", 1)
    assert u["edge|edge-model|cost_nusd"] == cost("edge", 5, 5)
    assert await redis.sismember(f"gw:usage:ids:{today()}", "_static")


async def test_without_the_key_store_nothing_is_accounted(redis_server, redis, two_tiers) -> None:
    _, _, gateway = await two_tiers(settings={"redis_url": redis_server.url}, pricing=PRICING)
    async with sdk(gateway) as client:
        await client.chat.completions.create(model="auto", messages=HI)
    assert not gateway.app[ACCOUNTING].enabled  # no ledger runs, nothing to wait for
    metrics = await scrape_metrics(gateway)
    assert "gateway_key_requests" not in metrics
    assert await redis.keys("gw:usage:*") == []


async def test_concurrent_requests_cannot_overspend_by_more_than_one(keyed, new_key, redis) -> None:
    # Completion tokens only, 1e6 nusd each on both tiers: an answer of 5 tokens costs
    # 5e6, exactly what a request with max_tokens 5 reserves.
    price = {"prompt_usd_per_1m": 0, "completion_usd_per_1m": 1000}
    edge, _, gateway = await keyed(pricing={"edge": price, "cloud": price})
    edge.script = Script(chunk_delay_s=0.05)  # all are admitted before any is settled
    key, plain = await new_key(budget=Budget(period="day", limit_usd=0.0225))

    async def one() -> bool:
        try:
            async with sdk(gateway, api_key=plain) as client:
                stream = await client.chat.completions.create(
                    model="auto", messages=HI, stream=True, max_tokens=5
                )
                _ = [chunk async for chunk in stream]
            return True
        except openai.RateLimitError as exc:
            assert exc.code == "budget_exceeded"
            return False

    results = await asyncio.gather(*(one() for _ in range(8)))
    served = sum(results)
    # Admitted while spent + reserved < 22.5e6: at 0, 5, 10, 15 and 20 (e6) reserved.
    assert served == 5
    spent, _ = await eventually_value(
        lambda: budget_of(redis, key), lambda b: b[1] == 0, what="reservations released"
    )
    assert spent == served * 5_000_000
    assert spent <= 22_500_000 + 5_000_000  # over by less than one request's cost


async def test_tokens_per_minute_count_real_usage(keyed, new_key, redis) -> None:
    _, _, gateway = await keyed()
    key, plain = await new_key(tpm=15)
    async with sdk(gateway, api_key=plain) as client:
        await client.chat.completions.create(model="auto", messages=HI)  # 10 tokens

        async def counted() -> int:
            keys = [k async for k in redis.scan_iter(match=f"gw:rl:{{{key.id}}}:tok:*")]
            return sum([int(await redis.get(k) or 0) for k in keys])

        await eventually_value(counted, lambda n: n == 10, what="the answer's tokens counted")
        with pytest.raises(openai.RateLimitError) as caught:
            # 10 counted plus this prompt (10 words) passes 15: refused until they age out.
            await client.chat.completions.create(
                model="auto",
                messages=[{"role": "user", "content": "one two three four five six seven eight"}],
            )
    assert caught.value.type == "tokens"


async def test_a_request_no_node_answered_gives_its_reservation_back(
    redis, edge_only, new_key
) -> None:
    gateway = await edge_only(f"http://127.0.0.1:{unused_port()}")
    # One request's reservation (its max_tokens at the cloud's price) fills the budget.
    key, plain = await new_key(budget=Budget(period="day", limit_usd=0.001))
    async with sdk(gateway, api_key=plain) as client:
        for _ in range(2):  # the second is admitted only if the first gave its share back
            with pytest.raises(openai.APIStatusError) as caught:
                await client.chat.completions.create(model="auto", messages=HI, max_tokens=100)
            assert caught.value.status_code in {502, 503}

            async def reserved() -> int:
                return (await budget_of(redis, key))[1]

            await eventually_value(reserved, lambda n: n == 0, what="the reservation released")
    assert await budget_of(redis, key) == (0, 0)
    assert await usage(redis, key.id) == {}  # no node answered: nothing was spent
