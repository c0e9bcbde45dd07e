"""Service logs: appended across restarts, rotated by size, one separator line per start.

``<logs>/edge.log`` holds every run of the edge node since the last rotation, each run
opened by a line such as ``===== 2025-06-01 12:00:00 +0200 edge node started (pid 4242)
=====``, so the log of a crash is still there after the restart. When a process starts
and its log has reached ``max_bytes`` (10 MiB), the log is rotated first: ``edge.log``
becomes ``edge.log.1``, ``edge.log.1`` becomes ``edge.log.2``, and so on up to ``keep``
(3) old files; the oldest is dropped. A log grows past ``max_bytes`` while its process
runs: only a (re)start rotates it, because the processes write the file themselves.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_KEEP = 3
_TAIL_BYTES = 64 * 1024
_SEPARATOR = re.compile(r"^===== .* started \(pid \d+\) =====$")


def rotate(path: Path, *, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_KEEP) -> bool:
    """Shift ``path`` to ``path.1`` (and ``.1`` to ``.2``...) if it has reached ``max_bytes``."""
    try:
        if path.stat().st_size < max_bytes:
            return False
    except FileNotFoundError:
        return False
    if keep < 1:
        path.unlink()
        return True
    for index in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{index}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{index + 1}"))
    path.replace(path.with_name(f"{path.name}.1"))
    return True


def start_marker(name: str) -> Callable[[], None]:
    """A ``preexec_fn`` part: write the separator line, with the child's own PID, to fd 1.

    It runs in the child after stdout was pointed at the log and before ``exec``, so the
    separator precedes anything the program writes. Only the PID is formatted there.
    """
    head = f"===== {time.strftime('%Y-%m-%d %H:%M:%S %z')} {name} started (pid ".encode()

    def write() -> None:
        # A blank line first when the log goes on, in case the last run died mid-line.
        gap = b"\n" if os.fstat(1).st_size > 0 else b""
        os.write(1, gap + head + str(os.getpid()).encode() + b") =====\n")

    return write


def is_separator(line: str) -> bool:
    return _SEPARATOR.match(line) is not None


def tail(path: Path, lines: int = 30) -> str:
    """The end of a log (from its last 64 KiB), indented, for messages."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, path.stat().st_size - _TAIL_BYTES))
            text = log.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(log unreadable: {exc})"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def current_run(path: Path) -> list[str]:
    """The lines the newest run wrote: everything after the log's last separator."""
    text = path.read_text(encoding="utf-8", errors="replace")
    found = text.splitlines()
    for index in range(len(found) - 1, -1, -1):
        if is_separator(found[index]):
            return found[index + 1 :]
    return found
