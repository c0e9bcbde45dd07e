"""W3C Trace Context in and out: the caller's ``traceparent``, and the one each node gets."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.trace import Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACE_HEADERS: Final = ("traceparent", "tracestate")

_PROPAGATOR = TraceContextTextMapPropagator()
_GETTER = DefaultGetter()


# -- propagation ---------------------------------------------------------------------------


def extract_context(headers: Mapping[str, str]) -> otel_context.Context:
    """The caller's trace context from ``traceparent``/``tracestate``, if any."""
    return _PROPAGATOR.extract(headers, getter=_GETTER)


def inject_context(headers: MutableMapping[str, str], span: Span | None = None) -> None:
    """Write ``span``'s (default: the current span's) ``traceparent`` into ``headers``."""
    context = trace.set_span_in_context(span) if span is not None else None
    _PROPAGATOR.inject(headers, context=context)


def passthrough_headers(incoming: Mapping[str, str], outgoing: dict[str, str]) -> None:
    """With tracing off, hand the caller's trace headers on unchanged, so a trace the
    client started still reaches the nodes (W3C Trace Context asks proxies to)."""
    for name in TRACE_HEADERS:
        value = incoming.get(name)
        if value is not None:
            outgoing[name] = value


def trace_id_of_current_span() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def span_id_of_current_span() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.span_id, "016x") if span_context.is_valid else None
