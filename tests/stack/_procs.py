"""Process helpers shared by the stack tests: is a PID still running, wait for a condition."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie counts as gone (it holds no port and runs no code).

    Every thread counts: a killed process's leader turns zombie while its other threads
    are still exiting, and those still hold its files and ports.
    """
    try:
        os.kill(pid, 0)
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:  # ProcessLookupError included
        return False
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat", encoding="ascii") as stat:
                if stat.read().split(") ")[1][0] not in "ZX":
                    return True
        except OSError:
            continue  # that thread is gone
    return False


def wait_for(check: Callable[[], object], timeout_s: float, what: str = "a condition") -> None:
    """Poll ``check`` until it is true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.05)
