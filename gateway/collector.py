"""The garbage collector's first threshold in the ``serve`` process.

CPython collects its youngest generation whenever the containers it tracks (dicts, lists,
objects) that were allocated and not yet freed number more than 700. A request in flight
holds a few hundred of them, and they die by reference count when it ends, so at 16
requests in flight that count passes 700 again and again while there is nothing to collect:
in ``bench/overhead.py`` (non-streamed, concurrency 16) the collector ran about once every
16 requests and spent about 15 us per request, 4-5% of its CPU, with a full collection of
about 15 ms every 2,000 requests on top. Above the in-flight working set, the same load
starts a young collection a handful of times in 12,000 requests, and a full one not at all
(docs/benchmarks.md).

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
