"""Tracing for the edge node: a tracer from the ``OTEL_*`` variables, the request's span
continuing the caller's ``traceparent``, and the engine's phases as its children.

The phases (``edge.queue_wait``, ``edge.prompt_eval``, ``edge.generation``) are timed by
the worker thread itself (``Started.queue_wait_s``, ``PromptEvaluated.prompt_eval_s``,
``Finished.decode_s``); :class:`JobTrace` turns those durations into spans with explicit
start and end times, anchored at the moment the job was submitted, so the event loop's
own scheduling delay does not blur them and no span is held open across the queue.

The ``OTEL_*`` variables are read, and the provider built, by :mod:`hybrid_common.otel`,
as the gateway's are (same variables, same rules, ``console-tree`` included); the edge
node imports nothing from the gateway.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from hybrid_common import otel
from hybrid_common.otel import TracerHandle, TracingConfig, build_provider, server_span

if TYPE_CHECKING:
    # Imported for real inside JobTrace.observe: settings imports this module, and the
    # engine imports the settings.
    from .engine import Event
    from .generation import Finished

SERVICE_NAME: Final = "edge-node"
"""``service.name`` when neither ``OTEL_SERVICE_NAME`` nor the resource attributes set one."""
PROVIDER_NAME: Final = "llama.cpp"

_NO_SPAN: contextlib.nullcontext[Span] = contextlib.nullcontext(trace.INVALID_SPAN)


def tracing_config_from_env(env: Mapping[str, str]) -> TracingConfig:
    """Parse ``OTEL_*`` (called by :func:`edge_node.cli.parse_settings`); ValueError
    names the variable at fault."""
    return otel.tracing_config_from_env(env, default_service_name=SERVICE_NAME)


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeTracing(TracerHandle):
    """The node's tracer and, when tracing is on, the provider to flush at shutdown."""


def disabled_tracing() -> EdgeTracing:
    return EdgeTracing(tracer=trace.NoOpTracer())


def build_tracing(config: TracingConfig, *, processor: SpanProcessor | None = None) -> EdgeTracing:
    """A tracer exporting as ``config`` says; ``processor`` replaces the exporters (tests)."""
    if not config.enabled and processor is None:
        return disabled_tracing()
    provider = build_provider(config, processor=processor)
    return EdgeTracing(tracer=provider.get_tracer("edge_node"), provider=provider)


def request_span(
    tracing: EdgeTracing, headers: Mapping[str, str], *, model: str
) -> contextlib.AbstractContextManager[Span]:
    """The chat request's SERVER span under the caller's ``traceparent``; a shared no-op
    when tracing is off. Exceptions are not recorded: their text may quote the prompt."""
    if tracing.provider is None:
        return _NO_SPAN
    attributes: dict[str, AttributeValue] = {
        "http.request.method": "POST",
        "http.route": "/v1/chat/completions",
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": PROVIDER_NAME,
        "gen_ai.response.model": model,
    }
    return server_span(
        tracing.tracer, "POST /v1/chat/completions", headers=headers, attributes=attributes
    )


def end_request_span(span: Span, *, status: int | None, outcome: str) -> None:
    """Status and outcome (``ok``, ``cancelled`` or the error code) on the request span.

    A failure is the server's when it answered 5xx, or 200 with an in-stream error event
    (generation broke after the headers); 4xx answers are the client's, not span errors.
    """
    if not span.is_recording():
        return
    span.set_attribute("edge.outcome", outcome)
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    client_error = status is not None and 400 <= status < 500
    if outcome not in ("ok", "cancelled") and not client_error:
        span.set_attribute("error.type", outcome)
        span.set_status(Status(StatusCode.ERROR, outcome))


_Phase = Literal["queue", "prompt", "generation", "done"]


class JobTrace:
    """Turns one job's engine events into phase spans under the request span."""

    __slots__ = ("_context", "_phase", "_phase_start_ns", "_prompt_tokens", "_tracer")

    def __init__(self, tracing: EdgeTracing, parent: Span, *, prompt_tokens: int) -> None:
        self._tracer = tracing.tracer
        self._context = trace.set_span_in_context(parent)
        self._prompt_tokens = prompt_tokens
        self._phase: _Phase = "queue"
        self._phase_start_ns = time.time_ns()  # call right before Engine.submit

    def observe(self, event: Event) -> None:
        """Record the phase ``event`` ends (Deltas end nothing)."""
        from .engine import Failed
        from .generation import Finished, PromptEvaluated, Started

        if isinstance(event, Started):
            self._span(
                "edge.queue_wait",
                event.queue_wait_s,
                {"edge.queue.wait_s": event.queue_wait_s},
            )
            self._phase = "prompt"
        elif isinstance(event, PromptEvaluated):
            self._span(
                "edge.prompt_eval",
                event.prompt_eval_s,
                {
                    "gen_ai.usage.input_tokens": self._prompt_tokens,
                    "edge.prompt.cached_tokens": event.cached_tokens,
                    "edge.prompt.evaluated_tokens": self._prompt_tokens - event.cached_tokens,
                },
            )
            self._phase = "generation"
        elif isinstance(event, Finished):
            self._finished(event)
        elif isinstance(event, Failed):
            self.abandon(event.error.code)

    def _finished(self, event: Finished) -> None:
        if self._phase == "prompt":  # ended before a first token (cancelled at once)
            self.abandon(event.finish_reason)
            return
        if self._phase != "generation":
            return
        decode_s = event.decode_s
        attributes: dict[str, AttributeValue] = {
            "gen_ai.usage.output_tokens": event.completion_tokens,
            "gen_ai.response.finish_reasons": [event.finish_reason],
        }
        if decode_s > 0 and event.completion_tokens > 1:
            attributes["edge.generation.tokens_per_s"] = (event.completion_tokens - 1) / decode_s
        self._span("edge.generation", decode_s, attributes)
        self._phase = "done"

    def abandon(self, reason: str) -> None:
        """End the phase in progress now, as failed (an error, or the client left)."""
        if self._phase == "done":
            return
        name = {"queue": "edge.queue_wait", "prompt": "edge.prompt_eval"}.get(
            self._phase, "edge.generation"
        )
        span = self._tracer.start_span(name, context=self._context, start_time=self._phase_start_ns)
        if span.is_recording():
            span.set_attribute("error.type", reason)
            span.set_status(Status(StatusCode.ERROR, reason))
        span.end()
        self._phase = "done"

    def _span(self, name: str, duration_s: float, attributes: dict[str, AttributeValue]) -> None:
        start = self._phase_start_ns
        end = start + int(duration_s * 1e9)
        span = self._tracer.start_span(
            name, context=self._context, start_time=start, attributes=attributes
        )
        span.end(end_time=end)
        self._phase_start_ns = end


class _NoJobTrace(JobTrace):
    """The job trace of a node with tracing off: observes nothing."""

    __slots__ = ()

    def __init__(self) -> None:
        pass

    def observe(self, event: Event) -> None:
        return None

    def abandon(self, reason: str) -> None:
        return None


NO_JOB_TRACE: Final[JobTrace] = _NoJobTrace()


def job_trace(tracing: EdgeTracing, parent: Span, *, prompt_tokens: int) -> JobTrace:
    if tracing.provider is None or not parent.is_recording():
        return NO_JOB_TRACE
    return JobTrace(tracing, parent, prompt_tokens=prompt_tokens)


__all__ = [
    "NO_JOB_TRACE",
    "EdgeTracing",
    "JobTrace",
    "TracingConfig",
    "build_tracing",
    "disabled_tracing",
    "end_request_span",
    "job_trace",
    "request_span",
    "tracing_config_from_env",
]
