"""Tracing for the edge node: a tracer from the ``OTEL_*`` variables, the request's span
continuing the caller's ``traceparent``, and the engine's phases as its children.

The phases (``edge.queue_wait``, ``edge.prompt_eval``, ``edge.generation``) are timed by
the worker thread itself (``Started.queue_wait_s``, ``PromptEvaluated.prompt_eval_s``,
``Finished.decode_s``); :class:`JobTrace` turns those durations into spans with explicit
start and end times, anchored at the moment the job was submitted, so the event loop's
own scheduling delay does not blur them and no span is held open across the queue.

The edge node imports from the gateway only what carries no gateway state:
``gateway.protocol`` and, for ``OTEL_TRACES_EXPORTER=console-tree``, the self-contained span
printer ``gateway.telemetry.console_tree`` (imported only then). The ``OTEL_*`` parsing here
mirrors ``gateway.telemetry``'s (same variables, same rules); one shared package for both is
due (issue 13).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import unquote

from opentelemetry import trace
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

if TYPE_CHECKING:
    # Imported for real inside JobTrace.observe: settings imports this module, and the
    # engine imports the settings.
    from .engine import Event
    from .generation import Finished

SERVICE_NAME: Final = "edge-node"
DEFAULT_OTLP_ENDPOINT: Final = "http://localhost:4318"
PROVIDER_NAME: Final = "llama.cpp"

Exporter = Literal["otlp", "console", "console-tree"]
_SAMPLERS: Final = frozenset(
    {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
)
_PROPAGATOR = TraceContextTextMapPropagator()
_GETTER = DefaultGetter()
_NO_SPAN: contextlib.nullcontext[Span] = contextlib.nullcontext(trace.INVALID_SPAN)


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingConfig:
    """What the ``OTEL_*`` variables ask for; no exporter means tracing is off."""

    exporters: frozenset[Exporter] = frozenset()
    service_name: str = SERVICE_NAME
    resource_attributes: tuple[tuple[str, str], ...] = ()
    otlp_endpoint: str = DEFAULT_OTLP_ENDPOINT + "/v1/traces"
    sampler: str = "parentbased_always_on"
    sampler_ratio: float = 1.0

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)


def tracing_config_from_env(env: Mapping[str, str]) -> TracingConfig:
    """Parse ``OTEL_*`` (called by :func:`edge_node.settings.parse_settings`); ValueError
    names the variable at fault."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TracingConfig()
    traces_endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base_endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    raw = env.get("OTEL_TRACES_EXPORTER")
    if raw is None or not raw.strip():
        names = ["otlp"] if traces_endpoint or base_endpoint else []
    else:
        names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    exporters: set[Exporter] = set()
    for name in names:
        if name == "otlp":
            exporters.add("otlp")
        elif name == "console":
            exporters.add("console")
        elif name == "console-tree":
            exporters.add("console-tree")  # the gateway's one-line-per-span tree printer
        elif name != "none":
            raise ValueError(
                f"OTEL_TRACES_EXPORTER: {name!r} is not supported "
                "(use otlp, console, console-tree or none)"
            )
    if "none" in names and exporters:
        raise ValueError("OTEL_TRACES_EXPORTER: 'none' cannot be combined with other exporters")
    if traces_endpoint:
        endpoint, variable = traces_endpoint, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    else:
        endpoint = (base_endpoint or DEFAULT_OTLP_ENDPOINT).rstrip("/") + "/v1/traces"
        variable = "OTEL_EXPORTER_OTLP_ENDPOINT"
    if not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"{variable}: {endpoint!r} must start with http:// or https://")
    protocol_variable = (
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        if env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        else "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    protocol = env.get(protocol_variable, "http/protobuf").strip() or "http/protobuf"
    if "otlp" in exporters and protocol != "http/protobuf":
        raise ValueError(f"{protocol_variable}: {protocol!r} is not supported; use http/protobuf")
    sampler = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if sampler not in _SAMPLERS:
        raise ValueError(f"OTEL_TRACES_SAMPLER: {sampler!r} is not supported")
    ratio = 1.0
    ratio_text = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if ratio_text and sampler.endswith("traceidratio"):
        try:
            ratio = float(ratio_text)
        except ValueError:
            raise ValueError(
                f"OTEL_TRACES_SAMPLER_ARG: {ratio_text!r} must be a number in [0, 1]"
            ) from None
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG: {ratio} must be in [0, 1]")
    attributes: list[tuple[str, str]] = []
    for item in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"OTEL_RESOURCE_ATTRIBUTES: {item!r} must be key=value")
        attributes.append((key.strip(), unquote(value.strip())))
    service = (
        env.get("OTEL_SERVICE_NAME", "").strip()
        or dict(attributes).get("service.name")
        or SERVICE_NAME
    )
    return TracingConfig(
        exporters=frozenset(exporters),
        service_name=service,
        resource_attributes=tuple(attributes),
        otlp_endpoint=endpoint,
        sampler=sampler,
        sampler_ratio=ratio,
    )


def _sampler(config: TracingConfig) -> sampling.Sampler:
    ratio = config.sampler_ratio
    root: sampling.Sampler
    if config.sampler.endswith("always_off"):
        root = sampling.ALWAYS_OFF
    elif config.sampler.endswith("traceidratio"):
        root = sampling.TraceIdRatioBased(ratio)
    else:
        root = sampling.ALWAYS_ON
    return sampling.ParentBased(root) if config.sampler.startswith("parentbased_") else root


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeTracing:
    """The node's tracer and, when tracing is on, the provider to flush at shutdown."""

    tracer: trace.Tracer
    provider: TracerProvider | None = None

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def shutdown(self) -> None:
        """Export what is buffered (blocking: run it in a thread)."""
        if self.provider is not None:
            self.provider.shutdown()

    def force_flush(self) -> None:
        if self.provider is not None:
            self.provider.force_flush()


def disabled_tracing() -> EdgeTracing:
    return EdgeTracing(tracer=trace.NoOpTracer())


def build_tracing(config: TracingConfig, *, processor: SpanProcessor | None = None) -> EdgeTracing:
    """A tracer exporting as ``config`` says; ``processor`` replaces the exporters (tests)."""
    if not config.enabled and processor is None:
        return disabled_tracing()
    resource = Resource.create(
        {**dict(config.resource_attributes), "service.name": config.service_name}
    )
    provider = TracerProvider(resource=resource, sampler=_sampler(config))
    if processor is not None:
        provider.add_span_processor(processor)
    else:
        if "otlp" in config.exporters:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint))
            )
        if "console" in config.exporters:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        if "console-tree" in config.exporters:
            from gateway.telemetry.console_tree import TreeConsoleSpanExporter

            provider.add_span_processor(
                BatchSpanProcessor(TreeConsoleSpanExporter(), schedule_delay_millis=500)
            )
    return EdgeTracing(tracer=provider.get_tracer("edge_node"), provider=provider)


def request_span(
    tracing: EdgeTracing, headers: Mapping[str, str], *, model: str
) -> contextlib.AbstractContextManager[Span]:
    """The chat request's SERVER span under the caller's ``traceparent``; a shared no-op
    when tracing is off. Exceptions are not recorded: their text may quote the prompt."""
    if tracing.provider is None:
        return _NO_SPAN
    return _server_span(tracing, headers, model)


@contextlib.contextmanager
def _server_span(tracing: EdgeTracing, headers: Mapping[str, str], model: str) -> Iterator[Span]:
    attributes: dict[str, AttributeValue] = {
        "http.request.method": "POST",
        "http.route": "/v1/chat/completions",
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": PROVIDER_NAME,
        "gen_ai.response.model": model,
    }
    with tracing.tracer.start_as_current_span(
        "POST /v1/chat/completions",
        context=_PROPAGATOR.extract(headers, getter=_GETTER),
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


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
