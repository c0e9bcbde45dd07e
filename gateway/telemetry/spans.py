"""The spans the gateway's own concepts become: upstream attempts and the request span."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Protocol

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from gateway.telemetry.propagation import inject_context
from hybrid_common import otel
from hybrid_common.protocol import Usage, message_text

if TYPE_CHECKING:
    from gateway.routing.decide import Decision
    from gateway.telemetry.tracer import Tracing

PROVIDER_BY_TIER: Final = {"edge": "llama.cpp", "cloud": "vllm"}
"""``gen_ai.provider.name`` of a node: the servers each tier is built on."""


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
    @property
    def skipped(self) -> bool: ...


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
    the tier of the first failed attempt or skipped node, ``reason`` the failure (or skip
    reason) of the last other node. Failures of the answering node itself (retried, then
    answered) are retries, listed in ``gateway.fallback.failures`` only. Skipped nodes
    are in ``failures`` too, in order, and alone in ``gateway.fallback.skipped``.
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
        skipped = [f"{f.node}:{f.reason}" for f in failures if f.skipped]
        if skipped:
            attributes["gateway.fallback.skipped"] = skipped
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
    with otel.server_span(tracing.tracer, name, headers=headers, attributes=attributes) as span:
        yield span
