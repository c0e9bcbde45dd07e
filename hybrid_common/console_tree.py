"""A compact console trace (``OTEL_TRACES_EXPORTER=console-tree``): one line per span,
indented as a tree, printed to stderr when the trace's root span ends (the first line
wrapped here)::

    trace 435dc73e0f6415db4537187001362fc9 hybrid-gateway
         +0.0    958.4 ms  POST /v1/chat/completions  status=200 route=cloud ... tier=edge
                           node=edge-2 fallback=cloud-1:unhealthy,edge-1:timeout
         +0.9      0.3 ms  ├─ gateway.classify  reason="score 0.56 > 0.55: ..." tier=cloud
         +1.4    800.5 ms  ├─ chat smollm2-135m-instruct  tier=edge node=edge-1 error=timeout
       +802.1    153.9 ms  └─ chat smollm2-135m-instruct  tier=edge node=edge-2 tokens=5/5

Columns: start (ms after the trace's first span), duration, the tree, the name and the
attributes an operator reads first (status, routing, tier, node, fallback, tokens,
error). A span waits in a bounded buffer until its trace's root (a span without a
parent, or whose parent came in a ``traceparent``) ends. A trace whose root never
comes is printed as ``(incomplete)`` once it is ``max_age_s`` old or the buffer holds
more than ``max_spans``, and at shutdown: nothing is held forever or lost silently.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode
from opentelemetry.util.types import AttributeValue

MAX_SPANS = 10_000
"""Spans buffered across all traces waiting for their root."""
MAX_AGE_S = 30.0
"""How long a trace waits for its root before it is printed as it is."""

_SHOWN: tuple[tuple[str, str], ...] = (
    ("http.response.status_code", "status"),
    ("gateway.route_tier", "route"),
    ("gateway.route_reason", "reason"),
    ("gateway.complexity_score", "score"),
    ("gateway.tier", "tier"),
    ("gateway.node", "node"),
    ("gateway.fallback.failures", "fallback"),
    ("gateway.continuations", "continuations"),
    ("gateway.continuation.form", "form"),
    ("gateway.session.store", "store"),
    ("gateway.session.turns", "turns"),
    ("edge.outcome", "outcome"),
)
"""Attributes shown, in this order, under a short name."""
_FLAGS: tuple[tuple[str, str], ...] = (
    ("gateway.attempt.retry", "retry"),
    ("gateway.attempt.continuation", "continuation"),
    ("gateway.client_disconnected", "client_disconnected"),
)
"""Boolean attributes shown as a bare word when true."""


@dataclass(slots=True)
class _Pending:
    first_seen: float
    spans: list[ReadableSpan] = field(default_factory=list)


class TreeConsoleSpanExporter(SpanExporter):
    """Prints each finished trace as an indented tree, one line per span."""

    def __init__(
        self,
        out: TextIO | None = None,
        *,
        max_spans: int = MAX_SPANS,
        max_age_s: float = MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._out = out
        """None: whatever ``sys.stderr`` is when a trace is printed."""
        self._max_spans = max_spans
        self._max_age_s = max_age_s
        self._clock = clock
        self._pending: dict[int, _Pending] = {}  # by trace id, oldest first
        self._buffered = 0
        self._lock = threading.Lock()  # export and shutdown may come from two threads
        self._shut_down = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        ended: list[tuple[list[ReadableSpan], bool]] = []
        with self._lock:
            if self._shut_down:
                return SpanExportResult.FAILURE
            now = self._clock()
            for span in spans:
                trace_id = span.context.trace_id
                pending = self._pending.get(trace_id)
                if pending is None:
                    pending = self._pending[trace_id] = _Pending(first_seen=now)
                pending.spans.append(span)
                self._buffered += 1
                if _is_root(span):
                    ended.append((self._take(trace_id), True))
            # Older traces first: those that waited too long, then the oldest over the cap.
            given_up = [
                (self._take(trace_id), False)
                for trace_id, pending in list(self._pending.items())
                if now - pending.first_seen >= self._max_age_s
            ]
            while self._buffered > self._max_spans:
                given_up.append((self._take(next(iter(self._pending))), False))
        return self._write(given_up + ended)

    def shutdown(self) -> None:
        """Print the traces still waiting for their root, as they are."""
        with self._lock:
            self._shut_down = True
            done = [(self._take(trace_id), False) for trace_id in list(self._pending)]
        self._write(done)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        # A trace still waiting for its root is in progress: it is printed when it ends.
        return True

    def _take(self, trace_id: int) -> list[ReadableSpan]:
        spans = self._pending.pop(trace_id).spans
        self._buffered -= len(spans)
        return spans

    def _write(self, done: list[tuple[list[ReadableSpan], bool]]) -> SpanExportResult:
        if not done:
            return SpanExportResult.SUCCESS
        text = "".join(render_tree(spans, complete=complete) for spans, complete in done)
        out = self._out if self._out is not None else sys.stderr
        try:
            out.write(text)
            out.flush()
        except (OSError, ValueError):  # stderr closed (a daemon at shutdown): nowhere to print
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS


def _is_root(span: ReadableSpan) -> bool:
    return span.parent is None or span.parent.is_remote


def render_tree(spans: Sequence[ReadableSpan], *, complete: bool = True) -> str:
    """One trace as text: a header line, then one line per span, children under their
    parent in start order. Spans whose parent is not among ``spans`` start a tree."""
    if not spans:
        return ""
    ids = {s.context.span_id for s in spans}
    children: dict[int, list[ReadableSpan]] = {}
    tops: list[ReadableSpan] = []
    for span in spans:
        parent = span.parent
        if parent is None or parent.span_id not in ids:
            tops.append(span)
        else:
            children.setdefault(parent.span_id, []).append(span)
    order = _start_ns
    tops.sort(key=order)
    origin = min(_start_ns(s) for s in spans)
    first = spans[0]
    service = first.resource.attributes.get("service.name") if first.resource else None
    header = f"trace {first.context.trace_id:032x}"
    if service:
        header += f" {service}"
    if not complete:
        header += " (incomplete: its root span was not seen)"
    lines = [header]
    # Depth-first, iteratively: (span, prefix for its line, prefix for its children).
    stack: list[tuple[ReadableSpan, str, str]] = [(s, "", "") for s in reversed(tops)]
    while stack:
        span, prefix, below = stack.pop()
        lines.append(_line(span, origin, prefix))
        kids = sorted(children.get(span.context.span_id, ()), key=order)
        for index in range(len(kids) - 1, -1, -1):
            last = index == len(kids) - 1
            branch, through = ("└─ ", "   ") if last else ("├─ ", "│  ")
            stack.append((kids[index], below + branch, below + through))
    return "\n".join(lines) + "\n"


def _start_ns(span: ReadableSpan) -> int:
    return span.start_time or 0


def _line(span: ReadableSpan, origin_ns: int, prefix: str) -> str:
    start_ms = (_start_ns(span) - origin_ns) / 1e6
    if span.end_time is not None:
        duration = f"{(span.end_time - _start_ns(span)) / 1e6:8.1f} ms"
    else:
        duration = "       … ms"
    words = " ".join(_attributes(span))
    return f"{start_ms:+9.1f} {duration}  {prefix}{span.name}" + (f"  {words}" if words else "")


def _attributes(span: ReadableSpan) -> list[str]:
    attributes = span.attributes or {}
    words = [f"{short}={_value(attributes[key])}" for key, short in _SHOWN if key in attributes]
    inputs = attributes.get("gen_ai.usage.input_tokens")
    outputs = attributes.get("gen_ai.usage.output_tokens")
    if inputs is not None or outputs is not None:
        estimated = "~" if attributes.get("gateway.usage.estimated") else ""
        words.append(f"tokens={estimated}{_value(inputs)}/{_value(outputs)}")
    words.extend(word for key, word in _FLAGS if attributes.get(key) is True)
    error = attributes.get("error.type") or attributes.get("gateway.error.code")
    if error is not None:
        words.append(f"error={_value(error)}")
    elif span.status.status_code is StatusCode.ERROR:
        words.append(f"error={_value(span.status.description or 'ERROR')}")
    return words


def _value(value: AttributeValue | None) -> str:
    if value is None:
        return "?"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # Bare when it reads as one word; quoted (JSON escapes) when it has spaces or quotes.
        plain = bool(value) and all(c.isprintable() and c not in ' "=' for c in value)
        return value if plain else json.dumps(value, ensure_ascii=False)
    return ",".join(_value(item) for item in value)


__all__ = ["MAX_AGE_S", "MAX_SPANS", "TreeConsoleSpanExporter", "render_tree"]
