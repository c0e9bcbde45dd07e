"""The garbage collector's first threshold in the ``serve`` process.

CPython collects its youngest generation whenever the containers it tracks (dicts, lists,
objects) that were allocated and not yet freed number more than 700. A request in flight
holds a few hundred of them, and they die by reference count when it ends, so at 16
requests in flight that count passes 700 again and again while there is nothing to collect:
under ``bench/overhead.py``'s load (non-streamed, concurrency 16) the collector ran about
once every 20 requests and spent about 13 us per request, 4% of its CPU, with a full
collection of about 20 ms every 3,000 requests among them. Above the in-flight working set,
the same 12,000 requests set off no collection at all (docs/benchmarks.md).

Reference cycles (an exception and its traceback, say) are still collected, just after more
allocations: at most about :data:`GEN0_THRESHOLD` young objects, a few megabytes.
"""

from __future__ import annotations

import gc
from typing import Final

GEN0_THRESHOLD: Final = 10_000
"""Net allocations of tracked objects between young collections (CPython's default: 700)."""


def tune_collector() -> None:
    """Raise the young generation's threshold; the older generations' stay as they are."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, older, oldest)


__all__ = ["GEN0_THRESHOLD", "tune_collector"]
