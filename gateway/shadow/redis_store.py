"""Shadow records in one Redis stream, capped in length and in age.

Each record is one stream entry with a single field, ``record`` (the JSON object of
:mod:`gateway.shadow.records`). One script appends it, caps the stream at
``max_records`` (``XADD MAXLEN``, exact: the cap is a promise to the operator), trims
entries older than ``ttl_s`` by Redis's own clock (``XTRIM MINID``; entry ids are Redis's
milliseconds, so no gateway clock is compared) and sets the key to expire ``ttl_s``
after this write, so a stream no gateway trims any more still goes. The sweep trims by age
only. Needs Redis 6.2 or later (``MINID``). One key: a Redis Cluster is fine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final

from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.jsonio import dumps
from gateway.policy.shadow import RedisStoreSpec
from gateway.redis_client import Client, close_client
from gateway.redis_client import redis_client as shared_client
from gateway.shadow.records import ShadowRecord
from gateway.shadow.store import ShadowStoreError, StoredLine

MAX_CONNECTIONS: Final = 8
"""Shadow writes are few (a sample, bounded in concurrency): a small pool is plenty."""
CALL_TIMEOUT_S: Final = 2.0
READ_BATCH: Final = 500
FIELD: Final = "record"

# KEYS[1] the stream. ARGV[1] max_records, ARGV[2] ttl_s, ARGV[3] the record ('' to trim only).
APPEND_LUA: Final = """
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'record', ARGV[3])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', ms - tonumber(ARGV[2]) * 1000))
end
return redis.call('XLEN', KEYS[1])
"""


def redis_client(url: str, *, cluster: bool = False) -> Client:
    """A lazily connecting client with a bounded pool and no retries of its own."""
    return shared_client(
        url, cluster=cluster, max_connections=MAX_CONNECTIONS, timeout_s=CALL_TIMEOUT_S
    )


class RedisShadowStore:
    """One stream (``spec.key``) on a client the caller owns and closes."""

    def __init__(self, client: Client, spec: RedisStoreSpec) -> None:
        self.spec = spec
        self._client = client
        self._append: AsyncScript = client.register_script(APPEND_LUA)

    async def append(self, record: ShadowRecord) -> None:
        await self._run(dumps(record))

    async def sweep(self) -> None:
        await self._run(b"")

    async def length(self) -> int:
        async with _translated("length"):
            return int(await self._client.xlen(self.spec.key))

    async def read(self) -> AsyncIterator[StoredLine]:
        start = "-"
        while True:
            async with _translated("read"):
                entries = await self._client.xrange(self.spec.key, min=start, count=READ_BATCH)
            entries = entries or []
            for entry_id, fields in entries:
                name = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                data = (fields or {}).get(FIELD.encode(), b"")
                yield StoredLine(
                    where=f"{self.spec.key} {name}",
                    data=data if isinstance(data, bytes) else str(data).encode(),
                )
                start = f"({name}"  # exclusive: the next batch starts after this entry
            if len(entries) < READ_BATCH:
                return

    async def aclose(self) -> None:
        """Nothing of its own to close: the client is shared."""

    async def _run(self, record: bytes) -> None:
        spec = self.spec
        async with _translated("append" if record else "sweep"):
            await self._append(keys=[spec.key], args=[spec.max_records, spec.ttl_s, record])


@contextlib.asynccontextmanager
async def _translated(op: str) -> AsyncIterator[None]:
    """A deadline on one call, and every failure as :class:`ShadowStoreError`."""
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            yield
    except TimeoutError as exc:
        raise ShadowStoreError(f"redis {op}: no answer within {CALL_TIMEOUT_S:g} s") from exc
    except (RedisError, OSError) as exc:
        raise ShadowStoreError(f"redis {op}: {type(exc).__name__}: {exc}") from exc


__all__ = ["Client", "RedisShadowStore", "close_client", "redis_client"]
