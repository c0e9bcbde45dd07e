"""Helpers shared by the tests: waiting for a condition instead of sleeping a fixed time,
and running the gateway's command line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


async def eventually(
    predicate: Callable[[], object], timeout_s: float = 5.0, what: str = "the condition"
) -> None:
    """Return once ``predicate()`` is true; fail the test after ``timeout_s``.

    A negative ("X did not happen") asserted after a fixed sleep passes vacuously on a slow
    machine; waiting for the positive that must follow it cannot.
    """
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} was not true within {timeout_s:g} s"
        await asyncio.sleep(0.02)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS`` from the repository root, output captured (60 s at most)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


__all__ = ["REPO_ROOT", "eventually", "run_cli"]
