"""Stop with the parent: for ``make run``, where make does not pass SIGINT on to its recipe.

GNU make forwards SIGTERM to the recipe it runs, but on SIGINT it only waits for the
recipe to end (it assumes a terminal sent the signal to the whole process group), so a
``make run`` in the background, sent ``kill -INT <make pid>``, would wait forever. What
can be seen from here is that make, while it handles a fatal signal, no longer catches
it: make resets the signal to its default action until the recipe ends, then re-raises it
on itself. :class:`ParentWatch` notices that (Linux: ``/proc/<ppid>/status``, ``SigCgt``),
and that the parent has died, and the command line then stops as on a signal of its own.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

_WATCHED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class ParentWatch:
    """Says when the parent process is stopping: it died, or handles a fatal signal."""

    def __init__(self) -> None:
        self.ppid = os.getppid()
        self._caught_at_start = _caught(self.ppid)
        self._name = _command_name(self.ppid)

    def stopping(self) -> str | None:
        """Why the parent is going away, or None while it is not."""
        if os.getppid() != self.ppid:
            return f"{self._name} (pid {self.ppid}) exited"
        caught = _caught(self.ppid)
        if caught is None or self._caught_at_start is None:
            return None
        for signum in _WATCHED:
            if signum in self._caught_at_start and signum not in caught:
                return f"{self._name} (pid {self.ppid}) got {signum.name}"
        return None


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "the parent process"


def _caught(pid: int) -> frozenset[signal.Signals] | None:
    """The watched signals ``pid`` has a handler for, or None where /proc cannot say."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            mask = int(line.split()[1], 16)
            return frozenset(s for s in _WATCHED if mask & (1 << (int(s) - 1)))
    return None
