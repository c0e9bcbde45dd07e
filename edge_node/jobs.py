"""Admitted requests (jobs), their events, and what a runner needs from the engine.

A job is created on the event loop when a request is admitted and handed to the engine's
worker thread, where a runner (:mod:`edge_node.serial`: one at a time, or
:mod:`edge_node.batching`: many sequences per decoding step) generates its answer. Events
flow from the worker to the waiting handler through the job's asyncio queue;
cancellation flows back through a ``threading.Event`` that runners check before every
token.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from .errors import EdgeError
from .generation import Delta, Finished, GenerationParams, PromptEvaluated, Started


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed:
    """The job ended with an error (before or during generation)."""

    error: EdgeError


Event = Started | PromptEvaluated | Delta | Finished | Failed


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


class Job:
    """One admitted request; its events arrive on ``events`` in order, Finished/Failed last."""

    __slots__ = ("admitted_at", "cancelled", "events", "lock", "params", "state")

    def __init__(self, params: GenerationParams) -> None:
        self.params = params
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.lock = threading.Lock()  # guards state between the loop and the worker
        self.state = JobState.QUEUED
        self.admitted_at = time.perf_counter()


class JobHost(Protocol):
    """The engine as a runner sees it (all called on the worker thread)."""

    def begin(self, job: Job) -> float | None:
        """Mark the job running and send Started; returns its queue wait in seconds, or
        None when it was cancelled while queued (then it must not run)."""
        ...

    def emit(self, job: Job, event: Started | PromptEvaluated | Delta) -> None:
        """Queue an event for the job's handler (sent at the next ``flush``)."""
        ...

    def flush(self) -> None:
        """Send the queued events to the event loop in one wake-up (once per step)."""
        ...

    def finish(self, job: Job, last: Finished | Failed, queue_wait_s: float) -> None:
        """Record the metrics, free the job's admission slot, send its last event."""
        ...

    def kv_changed(self) -> None:
        """KV cells or the prompt cache changed: refresh the memory gauges."""
        ...
