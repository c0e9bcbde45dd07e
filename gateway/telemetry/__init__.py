"""Tracing: configuration from ``OTEL_*``, the app's tracer (or none), propagation, and the
spans the gateway's own concepts become.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names ``otlp``, ``console`` (OpenTelemetry's
JSON) or ``console-tree`` (one line per span, as a tree: :mod:`hybrid_common.console_tree`)
(``otlp`` is the default as soon as an OTLP endpoint is set) and ``OTEL_SDK_DISABLED`` is
not true; the variables are read by :mod:`hybrid_common.otel`, as the edge node's are.
Spans leave over OTLP/HTTP (protobuf) through a batch processor, off the request path,
and are flushed when the app stops. With tracing off, :class:`Tracing` holds
OpenTelemetry's no-op tracer and every helper here returns at its first line: no span
objects, no attribute dicts, no exporter thread.

Prompt and completion text is never put on a span unless ``GATEWAY_TRACE_CONTENT=true``;
request headers (API keys) never are.

Span names and attributes (see docs/observability.md):

- ``POST /v1/chat/completions`` (SERVER): one per request; ``http.*``, ``gateway.*``.
- ``gateway.classify``: the routing decision (score, reason, tier, signals).
- ``gateway.session.load`` / ``gateway.session.append``: the Redis history.
- ``chat {model}`` (CLIENT): one per upstream attempt (retries and continuations too),
  with the OpenTelemetry GenAI attributes; its context is the ``traceparent`` the node gets.
"""

from gateway.telemetry.config import TracingConfig, tracing_config_from_env
from gateway.telemetry.propagation import (
    extract_context,
    inject_context,
    passthrough_headers,
    span_id_of_current_span,
    trace_id_of_current_span,
)
from gateway.telemetry.spans import (
    NO_ATTEMPT,
    PROVIDER_BY_TIER,
    AttemptSpan,
    decision_attributes,
    record_answer,
    record_route,
    server_span,
)
from gateway.telemetry.tracer import Tracing, build_tracing, disabled_tracing

__all__ = [
    "NO_ATTEMPT",
    "PROVIDER_BY_TIER",
    "AttemptSpan",
    "Tracing",
    "TracingConfig",
    "build_tracing",
    "decision_attributes",
    "disabled_tracing",
    "extract_context",
    "inject_context",
    "passthrough_headers",
    "record_answer",
    "record_route",
    "server_span",
    "span_id_of_current_span",
    "trace_id_of_current_span",
    "tracing_config_from_env",
]
