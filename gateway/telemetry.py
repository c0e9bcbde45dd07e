"""Tracing: configuration from ``OTEL_*``, the app's tracer (or none), propagation, and the
spans the gateway's own concepts become.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names ``otlp`` or ``console`` (``otlp`` is
the default as soon as an OTLP endpoint is set) and ``OTEL_SDK_DISABLED`` is not true.
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

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol
from urllib.parse import unquote, urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from gateway.protocol import Usage, message_text

if TYPE_CHECKING:
    from gateway.routing.decide import Decision

log = logging.getLogger("gateway.telemetry")

SERVICE_NAME: Final = "hybrid-gateway"
DEFAULT_OTLP_ENDPOINT: Final = "http://localhost:4318"
TRACE_HEADERS: Final = ("traceparent", "tracestate")

PROVIDER_BY_TIER: Final = {"edge": "llama.cpp", "cloud": "vllm"}
"""``gen_ai.provider.name`` of a node: the servers each tier is built on."""

_PROPAGATOR = TraceContextTextMapPropagator()
_GETTER = DefaultGetter()
_NO_SPAN: contextlib.nullcontext[Span] = contextlib.nullcontext(trace.INVALID_SPAN)

Exporter = Literal["otlp", "console"]
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
    service_name: str = SERVICE_NAME
    resource_attributes: tuple[tuple[str, str], ...] = ()
    otlp_endpoint: str = DEFAULT_OTLP_ENDPOINT + "/v1/traces"
    """The full URL spans are POSTed to."""
    sampler: SamplerName = "parentbased_always_on"
    sampler_ratio: float = 1.0
    capture_content: bool = False
    """GATEWAY_TRACE_CONTENT: prompt and completion text on the attempt spans."""

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)


def tracing_config_from_env(
    env: Mapping[str, str],
    *,
    default_service_name: str = SERVICE_NAME,
    capture_content: bool = False,
) -> TracingConfig:
    """Parse the standard ``OTEL_*`` variables; ValueError names the variable at fault.

    Only the OTLP/HTTP protobuf exporter is installed, so ``grpc`` and ``http/json``
    are refused at start-up rather than silently exporting nothing.
    """
    capture = capture_content
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TracingConfig(capture_content=capture)
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
        else:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER: {name!r} is not supported (use otlp, console or none)"
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


def _sampler(config: TracingConfig) -> sampling.Sampler:
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


# -- the tracer ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Tracing:
    """The app's tracer and, when tracing is on, the provider to flush at shutdown."""

    tracer: trace.Tracer
    provider: TracerProvider | None = None
    capture_content: bool = False

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

    def span(
        self, name: str, *, kind: SpanKind = SpanKind.INTERNAL
    ) -> contextlib.AbstractContextManager[Span]:
        """An internal span made current for the block; a shared no-op when tracing is off.

        Exceptions are not recorded as events: their messages may quote the request.
        """
        if self.provider is None:
            return _NO_SPAN
        return self.tracer.start_as_current_span(
            name, kind=kind, record_exception=False, set_status_on_exception=False
        )

    def attempt(
        self,
        *,
        tier: str,
        node: str,
        model: str,
        url: str,
        max_tokens: int | None,
        conversation_id: str | None,
        number: int,
        retry: bool,
        continuation: bool,
    ) -> AttemptSpan:
        """A GenAI CLIENT span for one upstream call; :data:`NO_ATTEMPT` when tracing is off."""
        if self.provider is None:
            return NO_ATTEMPT
        span = self.tracer.start_span(f"chat {model}", kind=SpanKind.CLIENT)
        if span.is_recording():
            parts = urlsplit(url)
            attributes: dict[str, AttributeValue] = {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": PROVIDER_BY_TIER.get(tier, tier),
                "gen_ai.request.model": model,
                "server.address": parts.hostname or "",
                "server.port": parts.port or (443 if parts.scheme == "https" else 80),
                "gateway.tier": tier,
                "gateway.node": node,
                "gateway.attempt": number,
                "gateway.attempt.retry": retry,
                "gateway.attempt.continuation": continuation,
            }
            if max_tokens is not None:
                attributes["gen_ai.request.max_tokens"] = max_tokens
            if conversation_id is not None:
                attributes["gen_ai.conversation.id"] = conversation_id
            span.set_attributes(attributes)
        return AttemptSpan(span, capture_content=self.capture_content)


def disabled_tracing() -> Tracing:
    return Tracing(tracer=trace.NoOpTracer())


def build_tracing(config: TracingConfig, *, processor: SpanProcessor | None = None) -> Tracing:
    """A tracer exporting as ``config`` says; ``processor`` replaces the exporters (tests
    pass a SimpleSpanProcessor over an in-memory exporter) and turns tracing on."""
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

            # Headers, timeout, compression and certificates: the exporter reads its own
            # OTEL_EXPORTER_OTLP_* variables.
            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint))
            )
        if "console" in config.exporters:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    log.info(
        "tracing on: service %s, exporters %s, sampler %s",
        config.service_name,
        ",".join(sorted(config.exporters)) or "custom",
        config.sampler,
    )
    return Tracing(
        tracer=provider.get_tracer("gateway"),
        provider=provider,
        capture_content=config.capture_content,
    )


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


# -- upstream attempts ---------------------------------------------------------------------


class AttemptSpan:
    """One upstream attempt's CLIENT span: started by the attempt loop, ended exactly once
    by whoever finishes the attempt (failure, whole answer, or the answer giving up)."""

    __slots__ = ("_capture", "_ended", "_span")

    def __init__(self, span: Span, *, capture_content: bool) -> None:
        self._span = span
        self._capture = capture_content and span.is_recording()
        self._ended = False

    @property
    def recording(self) -> bool:
        return not self._ended and self._span.is_recording()

    def headers(self, base: Mapping[str, str]) -> Mapping[str, str]:
        """``base`` plus this attempt's ``traceparent``: the node's spans become its children."""
        headers = dict(base)
        inject_context(headers, self._span)
        return headers

    def set(self, key: str, value: AttributeValue) -> None:
        if self.recording:
            self._span.set_attribute(key, value)

    def request_body(self, body: bytes) -> None:
        """With content capture on: the messages as this node got them."""
        if not (self._capture and self.recording):
            return
        try:
            messages = json.loads(body).get("messages")
        except (ValueError, AttributeError):
            return
        if isinstance(messages, list):
            self._span.set_attribute("gen_ai.input.messages", _messages_json(messages))

    def response(
        self,
        *,
        model: str | None,
        response_id: str | None = None,
        finish_reasons: Sequence[str] = (),
        usage: Usage | None = None,
        usage_estimated: bool = False,
        output_text: str | None = None,
    ) -> None:
        if not self.recording:
            return
        attributes: dict[str, AttributeValue] = {}
        if model is not None:
            attributes["gen_ai.response.model"] = model
        if response_id is not None:
            attributes["gen_ai.response.id"] = response_id
        if finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = list(finish_reasons)
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.get("prompt_tokens", 0)
            attributes["gen_ai.usage.output_tokens"] = usage.get("completion_tokens", 0)
            if usage_estimated:
                attributes["gateway.usage.estimated"] = True
        if self._capture and output_text is not None:
            reply: list[dict[str, object]] = [
                {"role": "assistant", "parts": [{"type": "text", "content": output_text}]}
            ]
            if finish_reasons:
                reply[0]["finish_reason"] = finish_reasons[0]
            attributes["gen_ai.output.messages"] = json.dumps(reply, ensure_ascii=False)
        self._span.set_attributes(attributes)

    def completion_payload(self, payload: bytes) -> None:
        """Response attributes from a whole ``chat.completion`` body."""
        if not self.recording:
            return
        try:
            parsed = json.loads(payload)
        except ValueError:
            return
        if not isinstance(parsed, dict):
            return
        listed = parsed.get("choices")
        choices: list[object] = listed if isinstance(listed, list) else []
        reasons = [
            str(c["finish_reason"])
            for c in choices
            if isinstance(c, dict) and c.get("finish_reason")
        ]
        text: str | None = None
        first = choices[0] if choices else None
        if isinstance(first, dict) and isinstance(first.get("message"), dict):
            content = first["message"].get("content")
            text = content if isinstance(content, str) else None
        usage = parsed.get("usage")
        self.response(
            model=parsed.get("model") if isinstance(parsed.get("model"), str) else None,
            response_id=parsed.get("id") if isinstance(parsed.get("id"), str) else None,
            finish_reasons=reasons,
            usage=usage if isinstance(usage, dict) else None,  # type: ignore[arg-type]
            output_text=text,
        )

    def fail(self, error_type: str, *, status_code: int | None = None) -> None:
        """Mark the attempt failed (``error.type``: the failure kind) and end it."""
        if self._ended:
            return
        if self._span.is_recording():
            self._span.set_attribute("error.type", error_type)
            if status_code is not None:
                self._span.set_attribute("http.response.status_code", status_code)
            # The kind, not the message: an upstream's error text may quote the request.
            self._span.set_status(Status(StatusCode.ERROR, error_type))
        self.end()

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._span.end()


class _NoAttempt(AttemptSpan):
    """The attempt span of a gateway with tracing off: every method returns at once."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(trace.INVALID_SPAN, capture_content=False)

    def headers(self, base: Mapping[str, str]) -> Mapping[str, str]:
        return base

    def fail(self, error_type: str, *, status_code: int | None = None) -> None:
        return None

    def end(self) -> None:
        return None


NO_ATTEMPT: Final[AttemptSpan] = _NoAttempt()


def _messages_json(messages: Sequence[object]) -> str:
    """OpenAI messages in the GenAI conventions' shape: role and text parts."""
    out: list[dict[str, object]] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        entry: dict[str, object] = {
            "role": str(message.get("role", "")),
            "parts": [{"type": "text", "content": message_text(message)}],  # type: ignore[arg-type]
        }
        out.append(entry)
    return json.dumps(out, ensure_ascii=False)


# -- the request span ----------------------------------------------------------------------


_BROKEN_OUTCOMES: Final = frozenset({"stream_truncated", "stream_timeout"})


class FailureLike(Protocol):
    @property
    def tier(self) -> str: ...
    @property
    def node(self) -> str: ...
    @property
    def reason(self) -> str: ...


def decision_attributes(decision: Decision, classifier: str) -> dict[str, AttributeValue]:
    """The ``gateway.classify`` span's attributes."""
    complexity = decision.complexity
    return {
        "gateway.tier": decision.tier,
        "gateway.route_reason": decision.reason,
        "gateway.route_reason_kind": decision.reason_kind,
        "gateway.complexity_score": complexity.score,
        "gateway.classify.signals": list(complexity.signals),
        "gateway.classify.prompt_tokens": complexity.prompt_tokens,
        "gateway.classify.classifier": classifier,
    }


def record_route(span: Span, decision: Decision) -> None:
    """The routing decision on the request's server span."""
    if span.is_recording():
        span.set_attributes(
            {
                "gateway.route_tier": decision.tier,
                "gateway.route_reason": decision.reason,
                "gateway.route_reason_kind": decision.reason_kind,
                "gateway.complexity_score": decision.score,
            }
        )


def record_answer(
    span: Span,
    *,
    tier: str | None,
    node: str | None,
    failures: Sequence[FailureLike],
    outcome: str,
    time_to_first_token_s: float | None = None,
    continuations: int = 0,
) -> None:
    """Who answered, after which failures, on the request's server span.

    ``gateway.fallback.*`` describe the move that led to the answering node: ``from`` is
    the tier of the first failed attempt, ``reason`` the failure of the last other node
    tried. Failures of the answering node itself (retried, then answered) are retries,
    listed in ``gateway.fallback.failures`` only.
    """
    if not span.is_recording():
        return
    attributes: dict[str, AttributeValue] = {"gateway.outcome": outcome}
    if tier is not None:
        attributes["gateway.tier"] = tier
    if node is not None:
        attributes["gateway.node"] = node
    if time_to_first_token_s is not None:
        attributes["gateway.time_to_first_token_s"] = time_to_first_token_s
    if continuations:
        attributes["gateway.continuations"] = continuations
    if outcome in _BROKEN_OUTCOMES:
        # The status was 200, but the client got an answer that ends in an error event.
        attributes["error.type"] = outcome
        span.set_status(Status(StatusCode.ERROR, outcome))
    if failures:
        attributes["gateway.fallback.failures"] = [f"{f.node}:{f.reason}" for f in failures]
        elsewhere = [f for f in failures if f.node != node]
        if elsewhere and tier is not None:
            attributes["gateway.fallback.from"] = failures[0].tier
            attributes["gateway.fallback.to"] = tier
            attributes["gateway.fallback.reason"] = elsewhere[-1].reason
    span.set_attributes(attributes)


@contextlib.contextmanager
def server_span(
    tracing: Tracing,
    *,
    name: str,
    headers: Mapping[str, str],
    attributes: Mapping[str, AttributeValue],
) -> Iterator[Span]:
    """The request's SERVER span, continuing the caller's ``traceparent``, made current."""
    with tracing.tracer.start_as_current_span(
        name,
        context=extract_context(headers),
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


__all__ = [
    "NO_ATTEMPT",
    "AttemptSpan",
    "Tracing",
    "TracingConfig",
    "build_tracing",
    "disabled_tracing",
    "extract_context",
    "inject_context",
    "passthrough_headers",
    "record_answer",
    "record_route",
    "server_span",
    "trace_id_of_current_span",
    "tracing_config_from_env",
]
