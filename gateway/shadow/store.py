"""The seam between shadowing and where its records go: a Redis stream or JSONL files.

Both stores are bounded (a length cap or a size cap, and an age cap) and both translate
every failure of their backend into :class:`ShadowStoreError`, in one place each.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from gateway.shadow.records import ShadowRecord


class ShadowStoreError(Exception):
    """A store could not be written or read (Redis down, a full disk, no permission)."""


@dataclass(frozen=True, slots=True)
class StoredLine:
    """One stored record as written, and where it lies (for errors that name it)."""

    where: str
    """``FILE:LINE`` for JSONL, ``KEY ENTRY-ID`` for a Redis stream."""
    data: bytes


class ShadowStore(Protocol):
    async def append(self, record: ShadowRecord) -> None:
        """Store one record, then drop what is over the store's caps."""

    async def sweep(self) -> None:
        """Drop records past the age cap (the service calls it every minute)."""

    def read(self) -> AsyncIterator[StoredLine]:
        """Every stored record, oldest first."""

    async def aclose(self) -> None: ...


__all__ = ["ShadowStore", "ShadowStoreError", "StoredLine"]
