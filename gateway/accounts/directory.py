"""Which key a request presents: the store's answer, kept for half a second per key.

**Propagation.** A change made on any replica (revoke, new limits, new tiers) is in
Redis at once; each replica reads a key's record again once its copy is ``ttl_s`` old
(0.5 s), so every replica acts on it within a second, without any message between them.

**Cost on the request path.** One SHA-256 of the presented key and a dict lookup; Redis
is asked at most once per key per ``ttl_s``, and concurrent requests with the same key
share that one read. A bearer token that cannot be a key of this gateway (no ``sk-gw-``
prefix, wrong length) is refused without asking Redis and is not remembered. Unknown
keys are remembered as unknown (for ``ttl_s`` too) in a cache of their own, so a flood
of made-up keys cannot push the real ones out: each cache holds at most ``max_entries``
and drops the one read longest ago.

**Redis down.** A copy up to ``stale_s`` (30 s) old keeps being used (and Redis is asked
again only every ``ttl_s``); past that, or for a key never seen, the request is refused
with 503 ``key_store_unavailable``: never let through unchecked, never a 500.

**Constant time.** The record found by the hash index must carry the same hash, compared
with :func:`hmac.compare_digest`; the lookup itself is keyed by a SHA-256 of 256 random
bits, which tells a timing attacker nothing about any key.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from gateway.accounts.model import KEY_PREFIX, ApiKey, key_hash, token_bytes
from gateway.accounts.store import KeyStore
from gateway.errors import KeyStoreUnavailable

log = logging.getLogger("gateway.keys")

DEFAULT_TTL_S: Final = 0.5
DEFAULT_STALE_S: Final = 30.0
DEFAULT_MAX_ENTRIES: Final = 10_000
_KEY_CHARS: Final = len(KEY_PREFIX) + 43
"""Every key the gateway issues has this length: the prefix and 256 bits in base64url
(:func:`~gateway.accounts.model.new_secret`)."""


@dataclass(slots=True)
class _Entry:
    key: ApiKey | None
    """None: no such key."""
    fresh_until: float
    """Until then, the copy is used without asking Redis."""
    stale_until: float
    """Until then, the copy stands in while Redis cannot be read."""


class KeyDirectory:
    """Looks up the keys of a :class:`KeyStore`; with ``store`` None it is disabled and
    knows no key (``GATEWAY_KEY_STORE`` unset)."""

    def __init__(
        self,
        store: KeyStore | None,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        stale_s: float = DEFAULT_STALE_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.stale_s = stale_s
        self._max_entries = max_entries
        self._clock = clock
        self._known: OrderedDict[str, _Entry] = OrderedDict()
        self._unknown: OrderedDict[str, _Entry] = OrderedDict()
        self._reading: dict[str, asyncio.Task[ApiKey | None]] = {}

    @property
    def enabled(self) -> bool:
        return self.store is not None

    async def authenticate(self, presented: str) -> ApiKey | None:
        """The active key ``presented`` is; None for an unknown or revoked key.

        Raises :class:`KeyStoreUnavailable` when Redis cannot be read and no copy under
        ``stale_s`` old is at hand.
        """
        if self.store is None or len(presented) != _KEY_CHARS:
            return None
        if not presented.startswith(KEY_PREFIX):
            return None
        digest = key_hash(token_bytes(presented))
        key = await self._lookup(digest)
        if key is None or key.revoked:
            return None
        if not hmac.compare_digest(key.hash.encode(), digest.encode()):
            log.error("key store: the hash index of %s names another record", key.id)
            return None
        return key

    def forget(self, digest: str) -> None:
        """Drop this replica's copy of a key (the admin API just changed it here)."""
        self._known.pop(digest, None)
        self._unknown.pop(digest, None)

    async def aclose(self) -> None:
        """Cancel the reads under way (the store's client is closed by its owner)."""
        reading = list(self._reading.values())
        for task in reading:
            task.cancel()
        await asyncio.gather(*reading, return_exceptions=True)

    async def _lookup(self, digest: str) -> ApiKey | None:
        now = self._clock()
        entry = self._known.get(digest) or self._unknown.get(digest)
        if entry is not None and now < entry.fresh_until and now < entry.stale_until:
            return entry.key
        task = self._reading.get(digest)
        if task is None:
            task = asyncio.create_task(self._read(digest))
            self._reading[digest] = task
            task.add_done_callback(lambda done: self._read_done(digest, done))
        # Shielded: one caller that goes away does not cancel the read the others await.
        return await asyncio.shield(task)

    async def _read(self, digest: str) -> ApiKey | None:
        assert self.store is not None
        try:
            key = await self.store.by_hash(digest)
        except KeyStoreUnavailable as exc:
            now = self._clock()
            entry = self._known.get(digest) or self._unknown.get(digest)
            if entry is None or now >= entry.stale_until:
                raise
            entry.fresh_until = now + self.ttl_s  # ask Redis again only after ttl_s
            log.warning(
                "key store unreadable, using a copy of %s up to %g s old: %s",
                entry.key.id if entry.key is not None else "an unknown key",
                self.stale_s,
                exc,
            )
            return entry.key
        now = self._clock()
        self.forget(digest)
        cache = self._unknown if key is None else self._known
        cache[digest] = _Entry(
            key=key, fresh_until=now + self.ttl_s, stale_until=now + self.stale_s
        )
        if len(cache) > self._max_entries:
            cache.popitem(last=False)
        return key

    def _read_done(self, digest: str, task: asyncio.Task[ApiKey | None]) -> None:
        if self._reading.get(digest) is task:
            del self._reading[digest]
        if not task.cancelled():
            task.exception()  # retrieved: whoever awaited it has it; nobody left is fine


__all__ = ["DEFAULT_STALE_S", "DEFAULT_TTL_S", "KeyDirectory"]
