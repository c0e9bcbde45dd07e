"""The Redis side of sessions: one list of JSON turns per session, appended by Lua.

Keys (see :mod:`gateway.sessions.keys`) carry the session's owner and id as a hash tag, so
a session's turn list, its idempotency markers and its deletion generation share one Redis
Cluster slot and each script is a single-slot transaction. Every call has a deadline;
every failure, whatever the client library raised, leaves this module as
:class:`StoreUnavailable` (the one place where redis-py's errors are translated).

**Deletion wins over appends in flight.** A request reads the session's *generation* when
it loads the history, and its append carries it. ``DELETE`` sets the generation to Redis's
own clock in milliseconds (always above the previous value) and keeps it for
``tombstone_s``; the append script refuses an append whose generation is older than the
session's. So a turn answered while its session was being deleted (or replayed from the
spool afterwards) does not bring the session back, while a request that loaded after the
deletion starts the session afresh. Only values Redis wrote are compared: no gateway clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from gateway.redis_client import close_client, redis_client
from gateway.sessions.keys import SessionRef, generation_key, request_key, turns_key
from gateway.sessions.turns import StoredTurn, decode_all, encode

MAX_CONNECTIONS: Final = 64
"""Bound on the connection pool; a request that finds it full waits (within its deadline)."""
_SOCKET_TIMEOUT_S: Final = 5.0
"""Backstop only: the per-call deadline (policy ``sessions.redis_timeout_s``) is shorter."""
_PUSH_BATCH: Final = 500
_DELETE_BATCH: Final = 500

UNKNOWN_GENERATION: Final = -1
"""The generation of a request that could not read the store: its append is not checked."""

# KEYS[1] turn list, KEYS[2] this request's marker, KEYS[3] the session's generation.
# ARGV[1] ttl_s, ARGV[2] max_turns, ARGV[3] "append" | "replace", ARGV[4] push batch,
# ARGV[5] generation the request loaded (-1: unknown), ARGV[6..] JSON turns.
# Returns 1 when the turns were written, 0 when this request's turns already were, -1 when
# the session was deleted after the request loaded it.
APPEND_LUA: Final = """
local seen = tonumber(ARGV[5])
if seen >= 0 and (tonumber(redis.call('GET', KEYS[3]) or '0') or 0) > seen then
  return -1
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
if ARGV[3] == 'replace' then
  redis.call('DEL', KEYS[1])
end
local batch = tonumber(ARGV[4])
local i = 6
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

# KEYS[1] turn list, KEYS[2] the session's generation. ARGV[1] tombstone TTL in seconds.
# Raises the generation above both its old value and Redis's clock (ms), deletes the list,
# and returns what it held (the caller deletes the markers those turns name).
DELETE_LUA: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local generation = math.max(ms, (tonumber(redis.call('GET', KEYS[2]) or '0') or 0) + 1)
redis.call('SET', KEYS[2], string.format('%d', generation), 'EX', tonumber(ARGV[1]))
redis.call('DEL', KEYS[1])
return items
"""


class AppendOutcome(StrEnum):
    WRITTEN = "ok"
    DUPLICATE = "duplicate"
    """This request's turns (same request id and content) were already stored."""
    ERASED = "erased"
    """The session was deleted after the request loaded it: nothing written."""


_OUTCOMES: Final = {1: AppendOutcome.WRITTEN, 0: AppendOutcome.DUPLICATE, -1: AppendOutcome.ERASED}


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
    generation: int
    """The session's deletion generation (0: never deleted); appends carry it back."""
    ttl_s: int | None = None
    """Seconds left before the session expires; None when it does not exist (or unread)."""


class SessionStore:
    """Session history in Redis (one server, a managed Redis, or a Redis Cluster)."""

    def __init__(self, client: aioredis.Redis | RedisCluster) -> None:
        self._client = client
        self._append: AsyncScript = client.register_script(APPEND_LUA)
        self._delete: AsyncScript = client.register_script(DELETE_LUA)

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False) -> SessionStore:
        """Connect lazily to ``redis://``, ``rediss://`` (TLS) or ``unix://`` URLs.

        redis-py's own retries are off: a retried call would blow the per-call deadline,
        and a failed append is not lost anyway (it goes to the spool).
        """
        return cls(
            redis_client(
                url, cluster=cluster, max_connections=MAX_CONNECTIONS, timeout_s=_SOCKET_TIMEOUT_S
            )
        )

    async def aclose(self) -> None:
        await close_client(self._client)

    async def ping(self, *, timeout_s: float) -> None:
        async with _deadline("ping", timeout_s):
            await self._client.ping()

    async def load(self, session: SessionRef, *, timeout_s: float) -> Snapshot:
        """The session's turns, oldest first ([] when there is no such session), and its
        generation, read in one round trip."""
        async with _deadline("load", timeout_s):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.lrange(turns_key(session), 0, -1)
                pipe.get(generation_key(session))
                items, generation = await pipe.execute()
        return Snapshot(turns=decode_all(items), generation=_generation(generation))

    async def snapshot(self, session: SessionRef, *, timeout_s: float) -> Snapshot:
        """Turns, generation and remaining TTL, read in one round trip."""
        key = turns_key(session)
        async with _deadline("load", timeout_s):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.lrange(key, 0, -1)
                pipe.ttl(key)
                pipe.get(generation_key(session))
                items, ttl, generation = await pipe.execute()
        return Snapshot(
            turns=decode_all(items),
            generation=_generation(generation),
            ttl_s=int(ttl) if int(ttl) >= 0 else None,
        )

    async def append(
        self,
        session: SessionRef,
        request_id: str,
        turns: Sequence[StoredTurn],
        *,
        digest: str | None = None,
        generation: int = UNKNOWN_GENERATION,
        replace: bool,
        ttl_s: int,
        max_turns: int,
        timeout_s: float,
    ) -> AppendOutcome:
        """Append (or, with ``replace``, substitute) one request's turns atomically.

        Idempotent per ``request_id`` and content ``digest``: DUPLICATE, and nothing
        written, if that request's turns are already there (a client retry, or a spool
        replay of a write whose reply was lost). ERASED, and nothing written, if the
        session was deleted since ``generation`` was loaded. The TTL is refreshed and the
        list capped at ``max_turns``, oldest dropped.
        """
        if not turns:
            return AppendOutcome.DUPLICATE
        if replace:
            turns = turns[-max_turns:]  # the script would trim them anyway
        args: list[bytes | str | int] = [
            ttl_s,
            max_turns,
            "replace" if replace else "append",
            _PUSH_BATCH,
            generation,
            *(encode(turn) for turn in turns),
        ]
        keys = [
            turns_key(session),
            request_key(session, request_id, digest),
            generation_key(session),
        ]
        async with _deadline("append", timeout_s):
            written = await self._append(keys=keys, args=args)
        return _OUTCOMES[int(written)]

    async def delete(self, session: SessionRef, *, tombstone_s: int, timeout_s: float) -> bool:
        """Erase the session's turns and the idempotency markers they name, and raise its
        generation so that appends loaded before now are refused for ``tombstone_s``.

        True if the session had turns. Every step stays in the session's slot.
        """
        async with _deadline("delete", timeout_s):
            items = await self._delete(
                keys=[turns_key(session), generation_key(session)], args=[tombstone_s]
            )
            markers = sorted(
                {
                    request_key(session, turn["request_id"], _digest_of(turn))
                    for turn in decode_all(items)
                    if isinstance(turn.get("request_id"), str)
                }
            )
            for start in range(0, len(markers), _DELETE_BATCH):
                await self._client.delete(*markers[start : start + _DELETE_BATCH])
        return bool(items)


def _digest_of(turn: StoredTurn) -> str | None:
    digest = turn.get("digest")
    return digest if isinstance(digest, str) else None


def _generation(value: bytes | str | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0  # not ours; the append script compares it as a number too


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
