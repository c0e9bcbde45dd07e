"""Shared pieces of the shadow tests: a record, and the records a Redis stream holds."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from gateway.shadow.records import AnswerSide, RouteSide, ShadowRecord


def record(number: int, *, request_id: str | None = None) -> ShadowRecord:
    """A complete record whose texts say which one it is."""
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    return ShadowRecord(
        version=1,
        id=request_id or f"req-{number}",
        answered_at=1_764_921_600.0 + number,
        shadowed_at=1_764_921_601.0 + number,
        messages=[{"role": "user", "content": f"question {number}"}],
        max_tokens=64,
        route=RouteSide(tier="edge", score=0.2, reason="score 0.20 <= 0.55", reason_kind="score"),
        edge=AnswerSide(
            tier="edge",
            node="edge-1",
            model="edge-model",
            response_id=f"chatcmpl-e{number}",
            content=f"edge answer {number}",
            finish_reason="stop",
            usage=usage,  # type: ignore[typeddict-item]
            duration_s=0.1,
        ),
        cloud=AnswerSide(
            tier="cloud",
            node="cloud-1",
            model="cloud-model",
            response_id=f"chatcmpl-c{number}",
            content=f"cloud answer {number}",
            finish_reason="stop",
            usage=usage,  # type: ignore[typeddict-item]
            duration_s=0.5,
        ),
    )


async def stream_records(url: str, key: str = "gateway:shadow") -> list[dict[str, Any]]:
    """The records in a shadow stream, oldest first, read with plain XRANGE."""
    client = aioredis.Redis.from_url(url)
    try:
        entries = await client.xrange(key) or []
    finally:
        await client.aclose()
    return [json.loads((fields or {})[b"record"]) for _, fields in entries]
