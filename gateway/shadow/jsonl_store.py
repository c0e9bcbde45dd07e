"""Shadow records as JSON lines in a directory, rotated by size and age.

Files are named after the moment their first record was written, ``shadow-<ms>.jsonl``
(Unix milliseconds, zero-padded, so names sort by age), and only the newest is written to.
The rules, applied before each write and by the sweep every minute:

- a new file is started once the newest reaches ``max_file_bytes`` or a quarter of
  ``ttl_s`` in age, so one file spans at most ``ttl_s / 4``;
- a file whose first record is ``ttl_s`` old is deleted: no record outlives ``ttl_s`` (plus
  the sweep's minute), and none is deleted before three quarters of it;
- beyond ``max_files`` files, the oldest are deleted: the store holds at most about
  ``max_files * max_file_bytes`` (a file may pass its size by the one record that does).

The directory is created ``0700`` and files ``0600``: they hold prompts. File work is
blocking, so it runs in a thread, one write at a time per store. One gateway process per
directory: replicas that share a volume should each name their own ``dir``.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final

from gateway.jsonio import dumps
from gateway.policy.shadow import JsonlStoreSpec
from gateway.shadow.records import ShadowRecord
from gateway.shadow.store import ShadowStoreError, StoredLine

_NAME: Final = re.compile(r"^shadow-(\d{13,})\.jsonl$")
READ_BATCH_BYTES: Final = 1 << 20
"""Lines are read about a MiB at a time: a file may be large, the export stays small."""


def file_name(started_ms: int) -> str:
    return f"shadow-{started_ms:013d}.jsonl"


def started_ms(path: Path) -> int | None:
    """When the file's first record was written, from its name; None if not ours."""
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else None


class JsonlShadowStore:
    def __init__(self, spec: JsonlStoreSpec, *, clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self._clock = clock
        """Unix seconds; tests pass their own to age files without waiting."""
        self._lock = asyncio.Lock()

    def files(self) -> list[Path]:
        """The store's files, oldest first."""
        try:
            found = [p for p in self.spec.dir.iterdir() if started_ms(p) is not None]
        except FileNotFoundError:
            return []
        return sorted(found, key=lambda p: started_ms(p) or 0)

    async def append(self, record: ShadowRecord) -> None:
        line = dumps(record) + b"\n"
        async with self._lock:
            await self._in_thread("append", self._append, line)

    async def sweep(self) -> None:
        async with self._lock:
            await self._in_thread("sweep", self._sweep)

    async def read(self) -> AsyncIterator[StoredLine]:
        for path in self.files():
            try:
                file = path.open("rb")
            except FileNotFoundError:
                continue  # swept between the listing and the read
            except OSError as exc:
                raise ShadowStoreError(f"cannot read {path}: {exc}") from exc
            number = 0
            with file:
                while True:
                    try:
                        batch = await asyncio.to_thread(file.readlines, READ_BATCH_BYTES)
                    except OSError as exc:
                        raise ShadowStoreError(f"cannot read {path}: {exc}") from exc
                    if not batch:
                        break
                    for data in batch:
                        number += 1
                        if data.strip():
                            yield StoredLine(where=f"{path}:{number}", data=data.rstrip(b"\n"))

    async def aclose(self) -> None:
        """Nothing is held open between writes."""

    async def _in_thread(self, op: str, work: Callable[..., object], *args: object) -> None:
        try:
            await asyncio.to_thread(work, *args)
        except OSError as exc:
            raise ShadowStoreError(f"jsonl {op} in {self.spec.dir}: {exc}") from exc

    def _append(self, line: bytes) -> None:
        now_ms = int(self._clock() * 1000)
        self.spec.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        files = self._sweep(now_ms)
        current = files[-1] if files else None
        if current is None or self._full(current, now_ms):
            newest = started_ms(current) if current is not None else None
            # A name of its own even when two files start within the same millisecond.
            current = self.spec.dir / file_name(max(now_ms, (newest or 0) + 1))
            files.append(current)
        fd = os.open(current, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a torn last write (a crash) stays one bad line of its own
            os.write(fd, line)
        finally:
            os.close(fd)
        for old in files[: max(0, len(files) - self.spec.max_files)]:
            old.unlink(missing_ok=True)

    def _full(self, path: Path, now_ms: int) -> bool:
        age_ms = now_ms - (started_ms(path) or 0)
        if age_ms >= self.spec.ttl_s * 1000 / 4:
            return True
        try:
            return path.stat().st_size >= self.spec.max_file_bytes
        except FileNotFoundError:
            return True

    def _sweep(self, now_ms: int | None = None) -> list[Path]:
        """Delete the files whose first record is ``ttl_s`` old; return those left."""
        if now_ms is None:
            now_ms = int(self._clock() * 1000)
        left: list[Path] = []
        for path in self.files():
            if now_ms - (started_ms(path) or 0) >= self.spec.ttl_s * 1000:
                path.unlink(missing_ok=True)
            else:
                left.append(path)
        return left


__all__ = ["JsonlShadowStore", "file_name", "started_ms"]
