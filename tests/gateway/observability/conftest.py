"""Fixtures for the observability tests: a gateway whose spans land in memory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.telemetry import Tracing, TracingConfig, build_tracing
from tests.helpers import eventually
from tests.helpers import sdk as sdk  # re-exported for older imports

SIMPLE = [{"role": "user", "content": "hi"}]


@dataclass(slots=True)
class Spans:
    """The spans a test's gateway finished, with look-ups for asserting the tree."""

    exporter: InMemorySpanExporter
    tracing: Tracing

    def all(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.all() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, f"{len(found)} spans named {name!r}: {self.names()}"
        return found[0]

    def server(self) -> ReadableSpan:
        servers = [s for s in self.all() if s.kind is SpanKind.SERVER]
        assert len(servers) == 1, self.names()
        return servers[0]

    async def settled(self, servers: int = 1, timeout_s: float = 5.0) -> None:
        """Wait until ``servers`` request spans ended: a streamed response reaches the
        client a moment before the handler (and so its span) returns."""
        await eventually(
            lambda: sum(s.kind is SpanKind.SERVER for s in self.all()) >= servers,
            timeout_s,
            f"{servers} request spans ended",
        )

    def attempts(self) -> list[ReadableSpan]:
        """CLIENT spans in start order."""
        clients = [s for s in self.all() if s.kind is SpanKind.CLIENT]
        return sorted(clients, key=lambda s: s.start_time or 0)

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        pid = parent.context.span_id
        return [s for s in self.all() if s.parent is not None and s.parent.span_id == pid]

    def names(self) -> list[str]:
        return [s.name for s in self.all()]

    def clear(self) -> None:
        self.exporter.clear()


def make_spans(*, capture_content: bool = False) -> Spans:
    exporter = InMemorySpanExporter()
    tracing = build_tracing(
        TracingConfig(capture_content=capture_content), processor=SimpleSpanProcessor(exporter)
    )
    return Spans(exporter=exporter, tracing=tracing)


@pytest.fixture
def spans() -> Spans:
    return make_spans()


def attrs(span: ReadableSpan) -> dict[str, object]:
    """Span attributes as a plain dict (sequences as lists, for simple comparisons)."""
    out: dict[str, object] = {}
    for key, value in (span.attributes or {}).items():
        out[key] = (
            list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
        )
    return out


def trace_hex(span: ReadableSpan) -> str:
    return format(span.context.trace_id, "032x")


def span_hex(span: ReadableSpan) -> str:
    return format(span.context.span_id, "016x")
