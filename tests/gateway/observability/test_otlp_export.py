"""End to end: ``python -m gateway serve`` configured by OTEL_* exports over OTLP/HTTP to a
real receiver, flushes on shutdown, and logs JSON lines that name the same trace."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from scripts.stack.processes import die_with_parent
from tests.conftest import policy_yaml
from tests.gateway.observability.conftest import SIMPLE
from tests.helpers import eventually, sdk
from tests.scripted import unused_port

ROOT = Path(__file__).resolve().parents[3]
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{CLIENT_TRACE}-b7ad6b7169203331-01"


@dataclass(slots=True)
class Receiver:
    """An OTLP/HTTP trace receiver: decodes each export request and keeps it."""

    requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        self.requests.append(message)
        self.content_types.append(request.content_type)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def spans(self) -> list[tuple[dict[str, str], ProtoSpan]]:
        """(resource attributes, span) for every span received."""
        out = []
        for message in self.requests:
            for resource_spans in message.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    out.extend((resource, span) for span in scope_spans.spans)
        return out


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    sink = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", sink.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield sink, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def _attributes(span: ProtoSpan) -> dict[str, object]:
    out: dict[str, object] = {}
    for attribute in span.attributes:
        value = attribute.value
        kind = value.WhichOneof("value")
        if kind == "array_value":
            out[attribute.key] = [v.string_value for v in value.array_value.values]
        else:
            out[attribute.key] = getattr(value, kind)
    return out


async def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            assert process.poll() is None, "the gateway exited at start-up"
            try:
                async with http.get(url + "/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline, "the gateway did not start"
            await asyncio.sleep(0.1)


async def test_gateway_process_exports_spans_and_logs_json_with_the_trace_id(
    receiver, upstreams, tmp_path: Path
) -> None:
    sink, sink_url = receiver
    edge = await upstreams("edge-model")
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml([(edge.url, "edge-model")], []))
    port = unused_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GATEWAY_"))}
    env.update(
        {
            "GATEWAY_POLICY": str(policy),
            "GATEWAY_PORT": str(port),
            "GATEWAY_LOG_LEVEL": "INFO",
            "OTEL_SERVICE_NAME": "gateway-under-test",
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink_url,
            # Longer than the test: spans can only arrive through the flush at shutdown.
            "OTEL_BSP_SCHEDULE_DELAY": "600000",
        }
    )
    stderr_path = tmp_path / "gateway.log"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(  # noqa: ASYNC220 (started once, waited on below)
            [sys.executable, "-m", "gateway", "serve"],
            cwd=ROOT,
            env=env,
            stderr=stderr,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
    try:
        url = f"http://127.0.0.1:{port}"
        await _wait_healthy(url, process)
        async with sdk(url) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="auto",
                messages=SIMPLE,
                extra_headers={"traceparent": TRACEPARENT, "x-request-id": "e2e-1"},
            )
        assert raw.parse().choices[0].message.content == "Hello from the upstream."
        # The access line is logged just before the request's span ends, and both come
        # before the response is written: an exporter that sent each span as it ended
        # would already have been heard from.
        await eventually(lambda: '"gateway.access"' in stderr_path.read_text(), 10, "logged")
        assert sink.requests == []  # nothing yet: the batch processor holds the spans
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    assert set(sink.content_types) == {"application/x-protobuf"}
    received = sink.spans()
    names = sorted(span.name for _, span in received)
    assert names == ["POST /v1/chat/completions", "chat edge-model", "gateway.classify"]
    assert {resource["service.name"] for resource, _ in received} == {"gateway-under-test"}
    assert {span.trace_id.hex() for _, span in received} == {CLIENT_TRACE}
    by_name = {span.name: span for _, span in received}
    server, attempt = by_name["POST /v1/chat/completions"], by_name["chat edge-model"]
    assert server.kind == ProtoSpan.SPAN_KIND_SERVER
    assert attempt.kind == ProtoSpan.SPAN_KIND_CLIENT
    assert server.parent_span_id.hex() == TRACEPARENT.split("-")[2]
    assert attempt.parent_span_id == server.span_id
    attempt_attrs = _attributes(attempt)
    assert attempt_attrs["gen_ai.provider.name"] == "llama.cpp"
    assert attempt_attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert _attributes(server)["gateway.request_id"] == "e2e-1"
    # The node got the attempt's context: its spans would join this trace.
    node_parent = edge.seen[0].headers["traceparent"].split("-")[2]
    assert node_parent == attempt.span_id.hex()

    lines = [json.loads(line) for line in stderr_path.read_text().splitlines() if line.strip()]
    (access,) = [entry for entry in lines if entry.get("logger") == "gateway.access"]
    assert access["request_id"] == "e2e-1"
    assert access["trace_id"] == CLIENT_TRACE
    assert access["status"] == 200
    assert any(entry["message"].startswith("gateway listening") for entry in lines)
