"""Tracing: an OpenTelemetry tracer for the app (or a no-op one), and trace propagation.

Configured by the standard ``OTEL_*`` variables, which the SDK reads itself
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and
``_ARG``, ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, headers, timeouts). Spans leave over
OTLP/HTTP through a batch processor, off the request path. With tracing off the tracer is
OpenTelemetry's no-op tracer: no span objects, no exporter, no thread.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("gateway.telemetry")

_PROPAGATOR = TraceContextTextMapPropagator()
_GETTER = DefaultGetter()
SERVICE_NAME = "hybrid-gateway"


@dataclass(slots=True)
class Tracing:
    """The app's tracer and, when tracing is on, the provider to flush at shutdown."""

    tracer: trace.Tracer
    provider: TracerProvider | None = None
    capture_content: bool = False

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()  # flushes the batch processor


def disabled_tracing() -> Tracing:
    return Tracing(tracer=trace.NoOpTracer())


def build_tracing(
    exporter: str, *, capture_content: bool = False, processor: SpanProcessor | None = None
) -> Tracing:
    """A tracer exporting by ``exporter`` (``otlp``, ``console`` or ``none``).

    ``processor`` replaces the exporter (tests pass an in-memory one).
    """
    if exporter == "none" and processor is None:
        return disabled_tracing()
    resource = Resource.create({"service.name": SERVICE_NAME}).merge(Resource.create())
    provider = TracerProvider(resource=resource)
    if processor is None:
        if exporter == "console":
            processor = BatchSpanProcessor(ConsoleSpanExporter())
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processor = BatchSpanProcessor(OTLPSpanExporter())
    provider.add_span_processor(processor)
    return Tracing(
        tracer=provider.get_tracer("gateway"), provider=provider, capture_content=capture_content
    )


def extract_context(headers: Mapping[str, str]) -> otel_context.Context:
    """The caller's trace context from ``traceparent``/``tracestate``, if any."""
    return _PROPAGATOR.extract(headers, getter=_GETTER)


def inject_context(headers: MutableMapping[str, str]) -> None:
    """Write the current span's ``traceparent`` into outgoing headers (nodes continue it)."""
    _PROPAGATOR.inject(headers)


def trace_id_of_current_span() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None
