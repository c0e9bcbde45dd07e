"""Writing usage-ledger entries straight into Redis, in the layout the ledger writes
(design of issue 15): the reading side is tested against the layout, not the writer."""

from __future__ import annotations

import json
from datetime import date

import redis.asyncio as aioredis


async def write_usage(
    client: aioredis.Redis,
    key_id: str,
    day: date,
    tier: str,
    model: str,
    *,
    requests: int,
    prompt_tokens: int,
    completion_tokens: int,
    cost_nusd: int,
    cloud_nusd: int,
    listed: bool = True,
) -> None:
    """Add one (key, day, tier, model) entry; ``listed``: also name the key in the day's
    id set, as the ledger does."""
    counters = {
        "requests": requests,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost_nusd": cost_nusd,
        "cloud_nusd": cloud_nusd,
    }
    key = f"gw:usage:{{{key_id}}}:{day.isoformat()}"
    async with client.pipeline(transaction=False) as pipe:
        for counter, value in counters.items():
            pipe.hincrby(key, f"{tier}|{model}|{counter}", value)
        if listed:
            pipe.sadd(f"gw:usage:ids:{day.isoformat()}", key_id)
        await pipe.execute()


async def write_sample_usage(
    client: aioredis.Redis, key_a: str, key_b: str, first: date, second: date, edge_model: str
) -> None:
    """The usage the report tests read: ``key_a`` 3 edge requests on ``first`` (free, worth
    0.3 mUSD at cloud prices) and 1 cloud request on ``second`` (0.1 mUSD); ``key_b`` 2 cloud
    requests on ``second`` (0.2 mUSD)."""
    await write_usage(client, key_a, first, "edge", edge_model, requests=3, prompt_tokens=300,
                      completion_tokens=150, cost_nusd=0, cloud_nusd=300_000)  # fmt: skip
    await write_usage(client, key_a, second, "cloud", "big", requests=1, prompt_tokens=100,
                      completion_tokens=50, cost_nusd=100_000, cloud_nusd=100_000)  # fmt: skip
    await write_usage(client, key_b, second, "cloud", "big", requests=2, prompt_tokens=200,
                      completion_tokens=100, cost_nusd=200_000, cloud_nusd=200_000)  # fmt: skip


async def write_key(client: aioredis.Redis, key_id: str, name: str) -> None:
    """A key record as the store keeps it (only what the report reads matters here)."""
    record = {"id": key_id, "name": name, "hash": "0" * 64, "created_at": 0.0}
    await client.set(f"gw:key:{{{key_id}}}", json.dumps(record))
