"""The engine: one worker thread that owns the model, fed by a bounded admission queue.

``llama_cpp.Llama`` must never be called from two threads at once, and it must never
run on the event loop, so a single worker thread loads the model (the HTTP server
already answers ``/health`` with 503 meanwhile), runs the start-up self-check (a few
greedy tokens, :mod:`edge_node.self_check`; a failure is reported like a failed load,
and the server process exits on it) and then hands admitted jobs to its runner, batched
or one at a time (:mod:`edge_node.runners`). Admission is decided on the event loop: at most
``parallel + max_queue`` jobs are admitted at once, and the next one is refused at once
with 503 ``overloaded`` so the gateway can fail over instead of waiting in an unbounded
queue.

Events flow from the worker to the waiting handler through the job's asyncio queue
(``call_soon_threadsafe``); cancellation flows back through a ``threading.Event``
checked before every token. A job's slot is released on the event loop, either when
it is cancelled while still queued or when the worker has finished with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from enum import StrEnum

from .errors import (
    ContextLengthExceeded,
    ModelLoading,
    Overloaded,
    Unavailable,
)
from .generation import Finished, GenerationParams, Started
from .jobs import Event, Failed, Job, JobState
from .memory import ModelMemory, model_memory
from .metrics import CompletionStats, EdgeMetrics
from .model import ChatModel, ModelLoader
from .prompt_cache import PromptCache
from .runners import Runner, make_runner
from .schema import ChatRequest
from .self_check import SELF_CHECK_TOKENS, SelfCheckFailed, run_self_check
from .settings import Settings

__all__ = ["Engine", "EngineState", "Event", "Failed", "FailureHandler", "Job"]

log = logging.getLogger(__name__)

_JOIN_TIMEOUT_S = 60.0


class EngineState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    CLOSED = "closed"


FailureHandler = Callable[[str], None]
"""Called on the event loop with the reason when the model cannot load or generate."""


class Engine:
    """Loads the model on its worker thread, checks it can generate, then serves admitted
    jobs with its runner (batched, or one at a time)."""

    def __init__(
        self,
        settings: Settings,
        metrics: EdgeMetrics,
        loader: ModelLoader,  # the registry's, which every engine of a node shares
        *,
        on_failure: FailureHandler | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._loader = loader
        self._on_failure = on_failure
        self.state = EngineState.LOADING
        self.load_error: str | None = None
        self.settled = asyncio.Event()
        """Set on the event loop once the model is ready or has failed to load."""
        self._model: ChatModel | None = None
        self._runner: Runner | None = None
        self._outbox: list[tuple[Job, Event]] = []  # worker side: events not yet delivered
        self.memory: ModelMemory | None = None
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._admitted: set[Job] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        metrics.queue_capacity.set(settings.capacity)
        metrics.sequences_capacity.set(settings.parallel)

    # -- event loop side ---------------------------------------------------------------

    def start(self) -> None:
        """Start loading the model in the worker thread; returns at once."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="edge-engine", daemon=True)
        self._thread.start()

    @property
    def n_ctx(self) -> int | None:
        return self._model.n_ctx if self._model is not None else None

    @property
    def model_name(self) -> str:
        return self._settings.served_model_name

    @property
    def kind(self) -> str:
        return "batched" if self._settings.batching else "serial"

    @property
    def admitted(self) -> int:
        """Requests admitted and not finished (generating + queued)."""
        return len(self._admitted)

    @property
    def queued(self) -> int:
        """Requests admitted and waiting for a sequence (racy reads: fine for reports)."""
        return max(0, self.admitted - self.running)

    @property
    def prompt_cache(self) -> PromptCache | None:
        runner = self._runner
        return runner.cache if runner is not None else None

    @property
    def running(self) -> int:
        """Requests being generated now (racy read of a counter: fine for reports)."""
        runner = self._runner
        return runner.running if runner is not None else 0

    def kv_cells(self) -> tuple[int, int, int] | None:
        """KV cells (running, cached, total) once the model is loaded."""
        runner, memory = self._runner, self.memory
        if runner is None or memory is None:
            return None
        used, cached = runner.kv_cells()
        return used, cached, memory.kv_cells

    def status(self) -> dict[str, object]:
        """Load, sequences and memory for ``/health`` (racy reads of counters: fine there)."""
        settings = self._settings
        status: dict[str, object] = {
            "engine": self.kind,
            "parallel": settings.parallel,
            "running": self.running,
            "queued": self.queued,
            "capacity": settings.capacity,
        }
        cells = self.kv_cells()
        if cells is not None:
            status["kv_cells"] = dict(zip(("running", "cached", "total"), cells, strict=True))
        if settings.speculative != "off":
            status["speculative"] = {"method": settings.speculative, **self._metrics.speculation()}
        return status

    def require_ready(self) -> ChatModel:
        """The loaded model, or 503 while it loads (or when it failed to)."""
        if self.state is EngineState.READY and self._model is not None:
            return self._model
        retry = self._settings.retry_after_s
        if self.state is EngineState.LOADING:
            raise ModelLoading("The model is still loading; retry shortly.", retry_after_s=retry)
        if self.state is EngineState.FAILED:
            raise Unavailable(f"The model failed to load: {self.load_error}", retry_after_s=retry)
        raise Unavailable("The edge node is shutting down.", retry_after_s=retry)

    async def prepare(self, request: ChatRequest) -> GenerationParams:
        """Tokenize the prompt (in a thread), reject overflow, clamp max_tokens to what fits."""
        model = self.require_ready()
        tokens = await asyncio.to_thread(model.prompt_tokens, request.messages)
        if len(tokens) >= model.n_ctx:
            raise ContextLengthExceeded(prompt_tokens=len(tokens), n_ctx=model.n_ctx)
        room = model.n_ctx - len(tokens)
        return GenerationParams(
            prompt_tokens=tuple(tokens),
            max_tokens=room if request.max_tokens is None else min(request.max_tokens, room),
            stop=request.stop,
            sampling=request.sampling,
            ignore_eos=request.ignore_eos,
        )

    def check_capacity(self) -> None:
        """Raise Overloaded (503) when every slot is taken; cheap, so call it early too."""
        settings = self._settings
        capacity = settings.capacity
        if len(self._admitted) >= capacity:
            raise Overloaded(
                f"The edge node is at capacity ({capacity} requests: {settings.parallel} "
                f"generating, {settings.max_queue} queued); retry later or use another node.",
                retry_after_s=settings.retry_after_s,
            )

    def submit(self, params: GenerationParams) -> Job:
        """Admit a job, or raise Overloaded (503) at once when every slot is taken."""
        self.require_ready()
        self.check_capacity()
        job = Job(params)
        self._admitted.add(job)
        self._metrics.in_flight.inc()
        self._metrics.queue_depth.inc()
        self._jobs.put(job)
        return job

    def cancel(self, job: Job) -> bool:
        """Client gone: drop a queued job now (True), or stop a running one at its next token."""
        with job.lock:
            queued = job.state is JobState.QUEUED
            if queued:
                job.state = JobState.CANCELLED
            elif job.state is JobState.RUNNING:
                job.cancelled.set()
        if queued:
            self._metrics.queue_depth.dec()
            self._release(job)
        return queued

    async def aclose(self) -> None:
        """Refuse new work, end queued jobs, stop the running one, join the worker."""
        self.state = EngineState.CLOSED
        for job in list(self._admitted):
            if self.cancel(job):
                retry = self._settings.retry_after_s
                job.events.put_nowait(
                    Failed(
                        error=Unavailable("The edge node is shutting down.", retry_after_s=retry)
                    )
                )
        self._jobs.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, _JOIN_TIMEOUT_S)
        self._metrics.model_loaded.set(0)

    def _release(self, job: Job) -> None:
        if job in self._admitted:
            self._admitted.remove(job)
            self._metrics.in_flight.dec()

    def _on_loaded(self, model: ChatModel) -> None:
        self._model = model
        if self.state is EngineState.LOADING:
            self.state = EngineState.READY
            self._metrics.model_loaded.set(1)
            log.info("model %s loaded (n_ctx=%d, %s engine)", model.name, model.n_ctx, self.kind)
        self.settled.set()

    def _on_load_failed(self, error: str) -> None:
        self.load_error = error
        if self.state is EngineState.LOADING:
            self.state = EngineState.FAILED
            if self._on_failure is not None:
                self._on_failure(error)
        self.settled.set()

    # -- worker thread side ------------------------------------------------------------

    def _call(self, callback: Callable[..., object], *args: object) -> None:
        assert self._loop is not None
        # RuntimeError means the loop is closed: nobody waits for this any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    def _run(self) -> None:
        try:
            model = self._loader(self._settings)
        except Exception as exc:  # the thread's outermost boundary: report, don't die silently
            log.exception("loading %s failed", self._settings.model_path)
            self._call(self._on_load_failed, f"{type(exc).__name__}: {exc}")
            return
        if not self._self_check(model):
            model.close()
            return
        try:
            runner = self._runner = make_runner(model, self, self._settings, self._metrics)
            self.memory = model_memory(model.llm)
            self._metrics.set_model_memory(model.name, self.memory)
            self.kv_changed()
            self._call(self._on_loaded, model)
            runner.run(self._jobs)
        finally:
            model.close()

    def _self_check(self, model: ChatModel) -> bool:
        """Generate a few tokens before going ready (see :mod:`edge_node.self_check`)."""
        # Said first: if llama.cpp kills the process here, this is the log's last line.
        log.info(
            "self-check: decoding %d tokens (if the node dies here, its CPU kernels fault on "
            "this host: try --weight-repack off)",
            SELF_CHECK_TOKENS,
        )
        try:
            result = run_self_check(model)
        except SelfCheckFailed as exc:
            log.error("self-check failed: %s", exc)
            self._call(self._on_load_failed, f"self-check failed: {exc}")
            return False
        log.info(
            "self-check passed: %d prompt tokens, %d generated (%r) in %.2f s",
            result.prompt_tokens,
            result.tokens,
            result.text,
            result.seconds,
        )
        return True

    # -- JobHost: what the runners call, on the worker thread -------------------------

    def begin(self, job: Job) -> float | None:
        with job.lock:
            if job.state is not JobState.QUEUED:
                return None  # cancelled while waiting; its slot was released then
            job.state = JobState.RUNNING
        queue_wait_s = time.perf_counter() - job.admitted_at
        self._metrics.queue_depth.dec()
        self._metrics.sequences_running.inc()
        self.emit(job, Started(queue_wait_s=queue_wait_s))
        self.flush()
        return queue_wait_s

    def emit(self, job: Job, event: Event) -> None:
        self._outbox.append((job, event))

    def flush(self) -> None:
        """Hand the events emitted since the last flush to the loop, in one wake-up."""
        if self._outbox:
            events, self._outbox = self._outbox, []
            self._call(_deliver, events)

    def finish(self, job: Job, last: Finished | Failed, queue_wait_s: float) -> None:
        self.flush()  # the job's earlier events go first
        if isinstance(last, Finished):
            self._record(last, queue_wait_s)
        with job.lock:
            job.state = JobState.DONE
        self._metrics.sequences_running.dec()
        # Release before the last event (loop callbacks run in order), so a client that
        # has its answer already sees the slot free and the metrics recorded.
        self._call(self._release, job)
        self._call(job.events.put_nowait, last)

    def kv_changed(self) -> None:
        runner = self._runner
        if runner is None:
            return
        self._metrics.set_kv_cells(*runner.kv_cells())
        cache = runner.cache
        if cache is not None:
            self._metrics.cache_bytes.set(cache.size_bytes)
            self._metrics.cache_entries.set(len(cache))

    def _record(self, finished: Finished, queue_wait_s: float) -> None:
        eval_s = finished.prompt_eval_s
        self._metrics.record_completion(
            CompletionStats(
                prompt_tokens=finished.prompt_tokens,
                cached_tokens=finished.cached_tokens,
                completion_tokens=finished.completion_tokens,
                queue_wait_s=queue_wait_s,
                time_to_first_token_s=None if eval_s is None else queue_wait_s + eval_s,
                decode_s=finished.decode_s,
            )
        )


def _deliver(events: list[tuple[Job, Event]]) -> None:
    """On the event loop: put a batch of events on their jobs' queues, in order."""
    for job, event in events:
        job.events.put_nowait(event)
