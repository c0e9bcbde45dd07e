"""The Redis side of sessions: one list of JSON turns per session, appended by Lua.

Keys (see :mod:`gateway.sessions.keys`) carry the session id as a hash tag, so a session's
turn list and its idempotency markers share one Redis Cluster slot and the append script
is a single-slot transaction. Every call has a deadline; every failure, whatever the
client library raised, leaves this module as :class:`StoreUnavailable` (the one place
where redis-py's errors are translated).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from gateway.sessions.keys import request_key, turns_key
from gateway.sessions.turns import StoredTurn, decode_all, encode

MAX_CONNECTIONS: Final = 64
"""Bound on the connection pool; a request that finds it full waits (within its deadline)."""
_SOCKET_TIMEOUT_S: Final = 5.0
"""Backstop only: the per-call deadline (policy ``sessions.redis_timeout_s``) is shorter."""
_PUSH_BATCH: Final = 500

# KEYS[1] turn list, KEYS[2] this request's marker.
# ARGV[1] ttl_s, ARGV[2] max_turns, ARGV[3] "append" | "replace", ARGV[4..] JSON turns.
# Returns 1 when the turns were written, 0 when this request's turns already were.
APPEND_LUA: Final = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
if ARGV[3] == 'replace' then
  redis.call('DEL', KEYS[1])
end
local batch = tonumber(ARGV[4])
local i = 5
while i <= #ARGV do
  local last = math.min(i + batch - 1, #ARGV)
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, last))
  i = last + 1
end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
redis.call('SET', KEYS[2], '1', 'EX', tonumber(ARGV[1]))
return 1
"""


class StoreUnavailable(Exception):
    """A Redis call failed or missed its deadline; the store may be down."""

    def __init__(self, op: str, detail: str) -> None:
        super().__init__(f"session store {op}: {detail}")
        self.op = op


class StoreRejected(StoreUnavailable):
    """Redis answered with an error (say WRONGTYPE: something else owns the key).

    Redis is up; the same call would fail again, so it is not worth retrying.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    turns: list[StoredTurn]
    ttl_s: int | None
    """Seconds left before the session expires; None when it does not exist."""


class SessionStore:
    """Session history in Redis (one server, a managed Redis, or a Redis Cluster)."""

    def __init__(self, client: aioredis.Redis | RedisCluster) -> None:
        self._client = client
        self._append: AsyncScript = client.register_script(APPEND_LUA)

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False) -> SessionStore:
        """Connect lazily to ``redis://``, ``rediss://`` (TLS) or ``unix://`` URLs.

        redis-py's own retries are off: a retried call would blow the per-call deadline,
        and a failed append is not lost anyway (it goes to the spool).
        """
        no_retry = Retry(NoBackoff(), 0)
        if cluster:
            return cls(
                RedisCluster.from_url(
                    url,
                    max_connections=MAX_CONNECTIONS,
                    socket_timeout=_SOCKET_TIMEOUT_S,
                    socket_connect_timeout=_SOCKET_TIMEOUT_S,
                    retry=no_retry,
                )
            )
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=_SOCKET_TIMEOUT_S,
            socket_timeout=_SOCKET_TIMEOUT_S,
            socket_connect_timeout=_SOCKET_TIMEOUT_S,
            retry=no_retry,
        )
        return cls(aioredis.Redis(connection_pool=pool))

    async def aclose(self) -> None:
        if isinstance(self._client, RedisCluster):
            await self._client.aclose()
        else:
            await self._client.aclose()
            await self._client.connection_pool.disconnect()

    async def ping(self, *, timeout_s: float) -> None:
        async with _deadline("ping", timeout_s):
            await self._client.ping()

    async def load(self, session_id: str, *, timeout_s: float) -> list[StoredTurn]:
        """The session's turns, oldest first ([] when there is no such session)."""
        async with _deadline("load", timeout_s):
            items = await self._client.lrange(turns_key(session_id), 0, -1)
        return decode_all(items)

    async def snapshot(self, session_id: str, *, timeout_s: float) -> Snapshot:
        """Turns and remaining TTL, read in one round trip."""
        key = turns_key(session_id)
        async with _deadline("load", timeout_s):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.lrange(key, 0, -1)
                pipe.ttl(key)
                items, ttl = await pipe.execute()
        return Snapshot(turns=decode_all(items), ttl_s=int(ttl) if int(ttl) >= 0 else None)

    async def append(
        self,
        session_id: str,
        request_id: str,
        turns: Sequence[StoredTurn],
        *,
        replace: bool,
        ttl_s: int,
        max_turns: int,
        timeout_s: float,
    ) -> bool:
        """Append (or, with ``replace``, substitute) one request's turns atomically.

        Idempotent per ``request_id``: False, and nothing written, if that request's turns
        are already there (a client retry, or a spool replay of a write whose reply was lost).
        The TTL is refreshed and the list capped at ``max_turns``, oldest dropped.
        """
        if not turns:
            return False
        if replace:
            turns = turns[-max_turns:]  # the script would trim them anyway
        args: list[bytes | str | int] = [
            ttl_s,
            max_turns,
            "replace" if replace else "append",
            _PUSH_BATCH,
            *(encode(turn) for turn in turns),
        ]
        async with _deadline("append", timeout_s):
            written = await self._append(
                keys=[turns_key(session_id), request_key(session_id, request_id)], args=args
            )
        return bool(written)

    async def delete(self, session_id: str, *, timeout_s: float) -> bool:
        """Erase the session's turns and the idempotency markers they name.

        True if the session existed. Both steps stay in the session's slot.
        """
        key = turns_key(session_id)
        async with _deadline("delete", timeout_s):
            items = await self._client.lrange(key, 0, -1)
            markers = {
                request_key(session_id, turn["request_id"])
                for turn in decode_all(items)
                if isinstance(turn.get("request_id"), str)
            }
            await self._client.delete(key, *sorted(markers))
        return bool(items)


@contextlib.asynccontextmanager
async def _deadline(op: str, timeout_s: float) -> AsyncIterator[None]:
    """Bound one store call and translate every failure into :class:`StoreUnavailable`."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError as exc:
        elapsed = time.monotonic() - started
        raise StoreUnavailable(op, f"no answer within {timeout_s:g} s ({elapsed:.3f} s)") from exc
    except ResponseError as exc:
        raise StoreRejected(op, f"{type(exc).__name__}: {exc}") from exc
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(op, f"{type(exc).__name__}: {exc}") from exc
