"""Reading a policy file (or a file it names) with limits: a regular file of bounded size.

A path may be a symlink to a regular file (how ConfigMaps are mounted); a device such as
``/dev/zero``, a FIFO or a directory is refused by name before a byte is read, and a file
larger than the cap is refused without reading it whole. Blocking: call it in a thread.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from gateway.policy.errors import PolicyError

MAX_POLICY_BYTES: Final = 1 << 20
"""A policy is a few KB; 1 MiB leaves room for hundreds of nodes and rules."""
MAX_WEIGHTS_BYTES: Final = 16 << 20
"""Classifier weights named by ``routing.classifier.model`` (the shipped file is 36 KB)."""

_KINDS: Final = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def read_policy_text(path: Path, *, max_bytes: int = MAX_POLICY_BYTES) -> str:
    """The file's UTF-8 text; a :class:`PolicyError` naming ``path`` for anything else."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _error(path, f"cannot read: {exc.strerror}") from exc
    try:
        _check(path, os.fstat(fd), max_bytes)
        data = _read_at_most(fd, max_bytes + 1)  # the file may have grown since fstat
    except OSError as exc:
        raise _error(path, f"cannot read: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise _error(path, f"larger than the limit of {max_bytes} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PolicyError(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x})", key="", line=line, source=str(path)
        ) from exc


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    while limit > 0 and (chunk := os.read(fd, min(limit, 1 << 16))):
        chunks.append(chunk)
        limit -= len(chunk)
    return b"".join(chunks)


def check_file(path: Path, *, max_bytes: int) -> None:
    """Refuse ``path`` unless it is a regular file of at most ``max_bytes`` (for readers
    that take a path); it may still change before it is read, which only its owner can do."""
    try:
        info = path.stat()
    except OSError as exc:
        raise _error(path, f"cannot read: {exc.strerror}") from exc
    _check(path, info, max_bytes)


def _check(path: Path, info: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = next(
            (name for test, name in _KINDS if test(info.st_mode)), "an unusual kind of file"
        )
        target = os.path.realpath(path)
        shown = f" ({target})" if target != os.path.abspath(path) else ""
        raise _error(path, f"not a regular file: {kind}{shown}")
    if info.st_size > max_bytes:
        raise _error(path, f"{info.st_size} bytes, larger than the limit of {max_bytes} bytes")


def _error(path: Path, message: str) -> PolicyError:
    return PolicyError(message, key="", line=None, source=str(path))


__all__ = ["MAX_POLICY_BYTES", "MAX_WEIGHTS_BYTES", "check_file", "read_policy_text"]
