"""Connecting to Redis the way every part of the gateway does: one server, a managed Redis
or a Redis Cluster (``redis://``, ``rediss://`` for TLS, ``unix://``), connected lazily,
with a bounded pool and no retries of redis-py's own (a retried call would blow the
caller's per-call deadline; callers decide what a failure means)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

Client = aioredis.Redis | RedisCluster


def redis_client(
    url: str, *, cluster: bool = False, max_connections: int, timeout_s: float
) -> Client:
    """A client whose every call (and wait for a pooled connection) is bounded by
    ``timeout_s``."""
    no_retry = Retry(NoBackoff(), 0)
    if cluster:
        return RedisCluster.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=no_retry,
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=no_retry,
    )
    return aioredis.Redis(connection_pool=pool)


async def close_client(client: Client) -> None:
    await client.aclose()
    if isinstance(client, aioredis.Redis):
        await client.connection_pool.disconnect()


__all__ = ["Client", "close_client", "redis_client"]
