"""Fixtures the accounts tests share: a Redis client on the test's redis-server and a
fresh metrics registry (so counters start at zero in every test)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from gateway.accounts.metrics import AccountMetrics
from gateway.redis_client import close_client, redis_client
from tests.fixtures.redis import RedisServer


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client with short timeouts, so a stopped or frozen Redis fails fast."""
    client = redis_client(redis_server.url, max_connections=8, timeout_s=0.5)
    yield client
    await close_client(client)


@pytest.fixture
def metrics() -> AccountMetrics:
    return AccountMetrics(CollectorRegistry())
