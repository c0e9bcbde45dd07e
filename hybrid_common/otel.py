"""Tracing configuration from the standard ``OTEL_*`` variables, and the provider it builds.

One reading of the variables for the gateway and the edge node: the same names, the same
rules, the same errors (a ValueError naming the variable at fault). Each service passes
its own default ``service.name``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import unquote

from opentelemetry import trace
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

DEFAULT_OTLP_ENDPOINT: Final = "http://localhost:4318"

Exporter = Literal["otlp", "console", "console-tree"]
"""``console`` is OpenTelemetry's JSON per span; ``console-tree`` one line per span, as a tree."""
SamplerName = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]
_SAMPLERS: Final[frozenset[str]] = frozenset(SamplerName.__args__)  # type: ignore[attr-defined]


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingConfig:
    """What the ``OTEL_*`` variables ask for; no exporter means tracing is off."""

    exporters: frozenset[Exporter] = frozenset()
    service_name: str = "unknown_service"
    """The ``service.name`` resource attribute; the parser always sets it."""
    resource_attributes: tuple[tuple[str, str], ...] = ()
    otlp_endpoint: str = DEFAULT_OTLP_ENDPOINT + "/v1/traces"
    """The full URL spans are POSTed to."""
    sampler: SamplerName = "parentbased_always_on"
    sampler_ratio: float = 1.0
    capture_content: bool = False
    """Prompt and completion text on spans: the service's own switch (the gateway's
    ``GATEWAY_TRACE_CONTENT``), never read from ``OTEL_*``."""

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)


def tracing_config_from_env(
    env: Mapping[str, str],
    *,
    default_service_name: str,
    capture_content: bool = False,
) -> TracingConfig:
    """Parse the standard ``OTEL_*`` variables; ValueError names the variable at fault.

    Only the OTLP/HTTP protobuf exporter is installed, so ``grpc`` and ``http/json``
    are refused at start-up rather than silently exporting nothing.
    """
    capture = capture_content
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TracingConfig(service_name=default_service_name, capture_content=capture)
    traces_endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base_endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    raw = env.get("OTEL_TRACES_EXPORTER")
    if raw is None or not raw.strip():
        names = ["otlp"] if traces_endpoint or base_endpoint else []
    else:
        names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    exporters: set[Exporter] = set()
    for name in names:
        if name == "none":
            continue
        if name == "otlp":
            exporters.add("otlp")
        elif name == "console":
            exporters.add("console")
        elif name == "console-tree":
            exporters.add("console-tree")
        else:
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
        raise ValueError(
            f"{protocol_variable}: {protocol!r} is not supported; use http/protobuf "
            "(the collector's OTLP/HTTP port, 4318)"
        )
    sampler = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if sampler not in _SAMPLERS:
        raise ValueError(
            f"OTEL_TRACES_SAMPLER: {sampler!r} is not supported (one of: "
            + ", ".join(sorted(_SAMPLERS))
            + ")"
        )
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
    attributes = _resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    service = (
        env.get("OTEL_SERVICE_NAME", "").strip()
        or dict(attributes).get("service.name")
        or default_service_name
    )
    return TracingConfig(
        exporters=frozenset(exporters),
        service_name=service,
        resource_attributes=attributes,
        otlp_endpoint=endpoint,
        sampler=sampler,  # type: ignore[arg-type]  # checked against _SAMPLERS above
        sampler_ratio=ratio,
        capture_content=capture,
    )


def _resource_attributes(text: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not item.strip():
            continue
        if not sep or not key.strip():
            raise ValueError(f"OTEL_RESOURCE_ATTRIBUTES: {item!r} must be key=value")
        pairs.append((key.strip(), unquote(value.strip())))
    return tuple(pairs)


def build_sampler(config: TracingConfig) -> sampling.Sampler:
    ratio = config.sampler_ratio
    match config.sampler:
        case "always_on":
            return sampling.ALWAYS_ON
        case "always_off":
            return sampling.ALWAYS_OFF
        case "traceidratio":
            return sampling.TraceIdRatioBased(ratio)
        case "parentbased_always_off":
            return sampling.ParentBased(sampling.ALWAYS_OFF)
        case "parentbased_traceidratio":
            return sampling.ParentBased(sampling.TraceIdRatioBased(ratio))
        case _:
            return sampling.ParentBased(sampling.ALWAYS_ON)


def build_provider(
    config: TracingConfig, *, processor: SpanProcessor | None = None
) -> TracerProvider:
    """A provider exporting as ``config`` says; ``processor`` replaces the exporters (tests
    pass a SimpleSpanProcessor over an in-memory exporter)."""
    resource = Resource.create(
        {**dict(config.resource_attributes), "service.name": config.service_name}
    )
    provider = TracerProvider(resource=resource, sampler=build_sampler(config))
    if processor is not None:
        provider.add_span_processor(processor)
        return provider
    if "otlp" in config.exporters:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Headers, timeout, compression and certificates: the exporter reads its own
        # OTEL_EXPORTER_OTLP_* variables.
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint))
        )
    if "console" in config.exporters:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    if "console-tree" in config.exporters:
        from hybrid_common.console_tree import TreeConsoleSpanExporter

        # Read by a person at a terminal: printed within half a second, not five.
        provider.add_span_processor(
            BatchSpanProcessor(TreeConsoleSpanExporter(), schedule_delay_millis=500)
        )
    return provider


# -- the tracer ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TracerHandle:
    """A service's tracer and, when tracing is on, the provider to flush at shutdown."""

    tracer: trace.Tracer
    provider: TracerProvider | None = None

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporter (blocking: run it in a thread)."""
        if self.provider is not None:
            self.provider.shutdown()

    def force_flush(self) -> None:
        if self.provider is not None:
            self.provider.force_flush()


_PROPAGATOR: Final = TraceContextTextMapPropagator()
_GETTER: Final = DefaultGetter()


@contextlib.contextmanager
def server_span(
    tracer: trace.Tracer,
    name: str,
    *,
    headers: Mapping[str, str],
    attributes: Mapping[str, AttributeValue],
) -> Iterator[Span]:
    """A request's SERVER span, continuing the caller's ``traceparent``, made current.

    Exceptions are not recorded: their messages may quote the prompt.
    """
    with tracer.start_as_current_span(
        name,
        context=_PROPAGATOR.extract(headers, getter=_GETTER),
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


__all__ = [
    "DEFAULT_OTLP_ENDPOINT",
    "Exporter",
    "SamplerName",
    "TracerHandle",
    "TracingConfig",
    "build_provider",
    "build_sampler",
    "server_span",
    "tracing_config_from_env",
]
