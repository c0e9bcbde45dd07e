"""The one-at-a-time runner (``--parallel 1``): each job gets the whole model in turn.

This is the engine the node had before continuous batching, kept as it was: it drives
``Llama.generate`` (:func:`edge_node.generation.run_generation`) with the live-state and
RAM-snapshot prompt reuse of :mod:`edge_node.prompt_cache`. The serving benchmark
measures it beside the batching runner.
"""

from __future__ import annotations

import logging
import queue

from .errors import GenerationFailed
from .generation import Delta, Finished, PromptEvaluated, Started, run_generation
from .jobs import Failed, Job, JobHost
from .model import ChatModel
from .prompt_cache import PromptCache, PromptReuse

log = logging.getLogger(__name__)


class SerialRunner:
    """Serves jobs one after the other until the ``None`` sentinel."""

    kind = "serial"

    def __init__(self, model: ChatModel, host: JobHost, cache_bytes: int) -> None:
        self._model = model
        self._host = host
        self.reuse = PromptReuse(model.llm, PromptCache(cache_bytes) if cache_bytes > 0 else None)
        self.running = 0

    @property
    def cache(self) -> PromptCache | None:
        return self.reuse.cache

    def kv_cells(self) -> tuple[int, int]:
        """(cells held for the running job, cells kept for the next prompt's reuse)."""
        live = int(self._model.llm.n_tokens)
        return (live, 0) if self.running else (0, live)

    def run(self, jobs: queue.SimpleQueue[Job | None]) -> None:
        while (job := jobs.get()) is not None:
            self._serve(job)

    def _emit(self, job: Job, event: Started | PromptEvaluated | Delta) -> None:
        self._host.emit(job, event)
        self._host.flush()  # one token at a time: send it now

    def _serve(self, job: Job) -> None:
        queue_wait_s = self._host.begin(job)
        if queue_wait_s is None:
            return  # cancelled while waiting; its slot was released then
        self.running = 1
        last: Finished | Failed
        try:
            last = run_generation(
                self._model,
                self.reuse,
                job.params,
                job.cancelled,
                lambda event: self._emit(job, event),
            )
        except Exception as exc:  # llama.cpp failed mid-request: a 5xx; the node lives on
            log.exception("generation failed")
            last = Failed(error=GenerationFailed(f"Generation failed: {type(exc).__name__}: {exc}"))
        self.running = 0
        self._host.kv_changed()
        self._host.finish(job, last, queue_wait_s)
