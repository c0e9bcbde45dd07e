"""The engine's runners: the seam its worker thread serves jobs through, and the choice.

With ``--parallel N`` above 1 the engine serves with the continuous-batching runner
(:mod:`edge_node.batching`, up to N requests decoded together), with ``--parallel 1`` with
the one-at-a-time runner (:mod:`edge_node.serial`). Both report back through the
:class:`~edge_node.jobs.JobHost` the engine implements, on the worker thread.
"""

from __future__ import annotations

import queue
from typing import Protocol

from .batching import BatchOptions, BatchRunner
from .jobs import Job, JobHost
from .metrics import EdgeMetrics
from .model import ChatModel
from .prompt_cache import PromptCache
from .serial import SerialRunner
from .settings import Settings

__all__ = ["Runner", "make_runner"]


class Runner(Protocol):
    """Serves jobs from the queue until its ``None`` sentinel (on the worker thread)."""

    kind: str

    @property
    def running(self) -> int: ...

    @property
    def cache(self) -> PromptCache | None: ...

    def kv_cells(self) -> tuple[int, int]: ...

    def run(self, jobs: queue.SimpleQueue[Job | None]) -> None: ...


def make_runner(
    model: ChatModel, host: JobHost, settings: Settings, metrics: EdgeMetrics
) -> Runner:
    """The runner ``settings`` asks for, reporting its steps and drafts to ``metrics``."""
    if not settings.batching:
        return SerialRunner(model, host, settings.prompt_cache_bytes)
    options = BatchOptions(
        parallel=settings.parallel,
        kv_cells=model.kv_cells,
        n_batch=settings.n_batch,
        prefill_chunk=settings.prefill_chunk,
        prompt_cache_bytes=settings.prompt_cache_bytes,
        shared_kv=settings.kv_unified,
        speculation=settings.speculation,
    )
    return BatchRunner(
        model,
        host,
        options,
        metrics.decode_steps.inc,
        metrics.preemptions.inc,
        metrics.record_drafts,
    )
