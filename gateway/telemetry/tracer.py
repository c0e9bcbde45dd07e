"""The app's tracer, or OpenTelemetry's no-op one when tracing is off."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import Span, SpanKind
from opentelemetry.util.types import AttributeValue

from gateway.telemetry.spans import NO_ATTEMPT, PROVIDER_BY_TIER, AttemptSpan
from hybrid_common.otel import TracerHandle, TracingConfig, build_provider

log = logging.getLogger("gateway.telemetry")

_NO_SPAN: contextlib.nullcontext[Span] = contextlib.nullcontext(trace.INVALID_SPAN)


# -- the tracer ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Tracing(TracerHandle):
    """The app's tracer and, when tracing is on, the provider to flush at shutdown."""

    capture_content: bool = False

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
    provider = build_provider(config, processor=processor)
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
