"""API keys in Redis: created, listed, changed and revoked by the admin API and the CLI,
looked up by hash on the request path (through :class:`~gateway.accounts.directory.KeyDirectory`).

Layout (docs/keys-and-budgets.md): ``gw:key:{<id>}`` holds the record as JSON (with the
key's SHA-256, never the key), ``gw:keyhash:<sha256>`` the id, and the set ``gw:keys``
every id. The record's key carries the id as a hash tag, so the limiter's scripts over
one key's counters share its Redis Cluster slot.

The three keys live in different slots, so creating a key is three writes, ordered so
that a failure between them leaves nothing usable behind: the hash index first (it
points at no record yet), then the record, then the id in ``gw:keys``. A key is usable
only once its create returned, and that is the only time its plain key is seen. A
record is changed by compare-and-set (a one-key script), so two admins changing one key
at once both land, neither overwriting the other.

Every call has a deadline; every failure, whatever redis-py raised, leaves this module
as :class:`~gateway.errors.KeyStoreUnavailable` (this is the one place they are
translated).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Final, Literal

from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.accounts import codec
from gateway.accounts.errors import KeyNotFound
from gateway.accounts.fields import (
    check_budget,
    check_key_id,
    check_metadata,
    check_name,
    check_per_minute,
    check_tiers,
    is_key_id,
)
from gateway.accounts.model import TIERS, ApiKey, Budget, key_hash, new_key_id, new_secret
from gateway.errors import KeyStoreUnavailable
from gateway.redis_client import Client
from hybrid_common.protocol import Tier

log = logging.getLogger("gateway.keys")

KEYS_SET: Final = "gw:keys"
_CAS_ATTEMPTS: Final = 8

# KEYS[1] a record. ARGV[1] the value read, ARGV[2] its replacement. 1: replaced; 0: the
# record changed (or went) since it was read.
COMPARE_AND_SET_LUA: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


def record_key(key_id: str) -> str:
    return f"gw:key:{{{key_id}}}"


def hash_key(digest: str) -> str:
    return f"gw:keyhash:{digest}"


class _Keep(enum.Enum):
    KEEP = "keep"


KEEP: Final = _Keep.KEEP
"""The default of every :meth:`KeyStore.update` field: leave it as it is (None clears)."""
Keep = Literal[_Keep.KEEP]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Changes:
    """Checked new values of an update; KEEP leaves a field as it is."""

    name: str | Keep
    metadata: Mapping[str, str] | Keep
    rpm: int | Keep | None
    tpm: int | Keep | None
    budget: Budget | Keep | None
    tiers: frozenset[Tier] | Keep

    def apply(self, key: ApiKey) -> ApiKey:
        return dataclasses.replace(
            key,
            name=key.name if isinstance(self.name, _Keep) else self.name,
            metadata=key.metadata if isinstance(self.metadata, _Keep) else self.metadata,
            rpm=key.rpm if isinstance(self.rpm, _Keep) else self.rpm,
            tpm=key.tpm if isinstance(self.tpm, _Keep) else self.tpm,
            budget=key.budget if isinstance(self.budget, _Keep) else self.budget,
            tiers=key.tiers if isinstance(self.tiers, _Keep) else self.tiers,
        )


class KeyStore:
    """Keys in Redis (one server, a managed Redis, or a Redis Cluster).

    Does not own ``client``: whoever made it closes it.
    """

    def __init__(
        self,
        client: Client,
        *,
        timeout_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._clock = clock
        self._cas: AsyncScript = client.register_script(COMPARE_AND_SET_LUA)

    @property
    def redis(self) -> Client:
        """The client the keys live in (the limiter and the usage ledger share it)."""
        return self._client

    async def ping(self) -> None:
        async with self._call("ping"):
            await self._client.ping()

    async def create(
        self,
        *,
        name: str,
        metadata: Mapping[str, str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        budget: Budget | None = None,
        tiers: Iterable[Tier] | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its plain form, which is shown now and never stored."""
        plain = new_secret()
        key = ApiKey(
            id=new_key_id(),
            name=check_name(name),
            hash=key_hash(plain),
            created_at=self._clock(),
            metadata=check_metadata(metadata),
            rpm=check_per_minute(rpm, param="rpm"),
            tpm=check_per_minute(tpm, param="tpm"),
            budget=check_budget(budget),
            tiers=check_tiers(TIERS if tiers is None else tiers),
        )
        async with self._call("create"):
            # 256 random bits cannot collide; 48 bits of id could, once in billions.
            if not await self._client.set(hash_key(key.hash), key.id, nx=True):
                raise KeyStoreUnavailable("key store create: the new key's hash exists")
            while not await self._client.set(record_key(key.id), codec.encode(key), nx=True):
                key = dataclasses.replace(key, id=new_key_id())
                await self._client.set(hash_key(key.hash), key.id)
            await self._client.sadd(KEYS_SET, key.id)
        return key, plain

    async def list(self, *, include_revoked: bool = False) -> builtins.list[ApiKey]:
        """Every key (revoked ones too, when asked), oldest first."""
        async with self._call("list"):
            ids = sorted(_text(i) for i in await self._client.smembers(KEYS_SET))
            if not ids:
                return []
            async with self._client.pipeline(transaction=False) as pipe:
                for key_id in ids:
                    pipe.get(record_key(key_id))
                records = await pipe.execute()
        keys: builtins.list[ApiKey] = []
        for key_id, raw in zip(ids, records, strict=True):
            if raw is None:
                continue  # created half-way (see the module's docstring): never usable
            try:
                keys.append(codec.decode(raw))
            except codec.UnreadableRecord as exc:  # one bad record hides no other key
                log.error("key store: the record of %s is unreadable: %s", key_id[:20], exc)
        keys.sort(key=lambda key: (key.created_at, key.id))
        return [key for key in keys if include_revoked or not key.revoked]

    async def get(self, key_id: str) -> ApiKey:
        """The key with this id; :class:`KeyNotFound` when there is none."""
        _, key = await self._read(key_id, "get")
        return key

    async def update(
        self,
        key_id: str,
        *,
        name: str | Keep = KEEP,
        metadata: Mapping[str, str] | Keep | None = KEEP,
        rpm: int | Keep | None = KEEP,
        tpm: int | Keep | None = KEEP,
        budget: Budget | Keep | None = KEEP,
        tiers: Iterable[Tier] | Keep = KEEP,
    ) -> ApiKey:
        """The key with the fields given changed: a value sets a field, None clears an
        optional one (metadata, rpm, tpm, budget), a field left out stays."""
        checked = _Changes(
            name=name if isinstance(name, _Keep) else check_name(name),
            metadata=metadata if isinstance(metadata, _Keep) else check_metadata(metadata),
            rpm=rpm if isinstance(rpm, _Keep) else check_per_minute(rpm, param="rpm"),
            tpm=tpm if isinstance(tpm, _Keep) else check_per_minute(tpm, param="tpm"),
            budget=budget if isinstance(budget, _Keep) else check_budget(budget),
            tiers=tiers if isinstance(tiers, _Keep) else check_tiers(tiers),
        )
        return await self._change(key_id, "update", checked.apply)

    async def revoke(self, key_id: str) -> ApiKey:
        """The key, revoked (now, or when it was first revoked: revoking twice is a no-op)."""
        now = self._clock()
        return await self._change(
            key_id,
            "revoke",
            lambda key: key if key.revoked else dataclasses.replace(key, revoked_at=now),
        )

    async def by_hash(self, digest: str) -> ApiKey | None:
        """The key whose SHA-256 is ``digest`` (revoked or not); None when there is none."""
        async with self._call("lookup"):
            found = await self._client.get(hash_key(digest))
            if found is None:
                return None
            key_id = _text(found)
            if not is_key_id(key_id):
                raise KeyStoreUnavailable(f"key store: {hash_key(digest)[:20]}... is unreadable")
            raw = await self._client.get(record_key(key_id))
        return None if raw is None else self._decode(raw, key_id)

    async def _read(self, key_id: str, op: str) -> tuple[bytes | str, ApiKey]:
        check_key_id(key_id)
        async with self._call(op):
            raw = await self._client.get(record_key(key_id))
        if raw is None:
            raise KeyNotFound(f"No API key has the id {key_id!r}.", param="key_id")
        return raw, self._decode(raw, key_id)

    async def _change(self, key_id: str, op: str, change: Callable[[ApiKey], ApiKey]) -> ApiKey:
        for _ in range(_CAS_ATTEMPTS):
            raw, key = await self._read(key_id, op)
            changed = change(key)
            if changed == key:
                return key
            async with self._call(op):
                done = await self._cas(keys=[record_key(key_id)], args=[raw, codec.encode(changed)])
            if done:
                return changed
        raise KeyStoreUnavailable(f"key store {op}: {key_id} kept changing under this update")

    def _decode(self, raw: bytes | str, key_id: str) -> ApiKey:
        try:
            return codec.decode(raw)
        except codec.UnreadableRecord as exc:
            raise KeyStoreUnavailable(f"key store: the record of {key_id} is unreadable") from exc

    @contextlib.asynccontextmanager
    async def _call(self, op: str) -> AsyncIterator[None]:
        """Bound one store call and translate every failure into KeyStoreUnavailable."""
        try:
            async with asyncio.timeout(self._timeout_s):
                yield
        except TimeoutError as exc:
            raise KeyStoreUnavailable(
                f"key store {op}: no answer from Redis within {self._timeout_s:g} s"
            ) from exc
        except (RedisError, OSError) as exc:
            raise KeyStoreUnavailable(f"key store {op}: {type(exc).__name__}: {exc}") from exc


def _text(value: bytes | str) -> str:
    """A Redis reply as text (the client returns bytes; anything not ASCII is no id)."""
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


__all__ = ["KEEP", "KEYS_SET", "Keep", "KeyStore", "hash_key", "record_key"]
