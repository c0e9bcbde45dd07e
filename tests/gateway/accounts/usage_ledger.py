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


async def write_key(client: aioredis.Redis, key_id: str, name: str) -> None:
    """A key record as the store keeps it (only what the report reads matters here)."""
    record = {"id": key_id, "name": name, "hash": "0" * 64, "created_at": 0.0}
    await client.set(f"gw:key:{{{key_id}}}", json.dumps(record))
