"""Edge node spans (real SmolLM2): the request span continues the caller's traceparent and
holds the queue wait, prompt evaluation and generation phases."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from edge_node.app import create_app
from edge_node.cli import parse_settings
from edge_node.settings import Settings
from edge_node.tracing import SERVICE_NAME, EdgeTracing, build_tracing, tracing_config_from_env
from gateway.telemetry import build_tracing as build_gateway_tracing
from gateway.telemetry.config import SERVICE_NAME as GATEWAY_SERVICE_NAME
from hybrid_common.otel import TracingConfig
from tests.conftest import policy_yaml
from tests.edge_node.conftest import InProcessNode, chat_body
from tests.fixtures.edge import EDGE_TEST_N_THREADS

pytestmark = pytest.mark.edge_model

TRACE = "5b8efff798038103d269b633813fc60c"
PARENT = "eee19b7ec3c1b174"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"
PHASES = ["edge.queue_wait", "edge.prompt_eval", "edge.generation"]

StartNode = Callable[..., Awaitable[InProcessNode]]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def traced_node(
    model_path: Path, http: aiohttp.ClientSession
) -> AsyncIterator[Callable[..., Awaitable[InProcessNode]]]:
    """In-process nodes whose spans go to the given exporter."""
    servers: list[TestServer] = []

    async def start(exporter: InMemorySpanExporter, **overrides: object) -> InProcessNode:
        settings = Settings(
            model_path=model_path, n_ctx=2048, n_threads=EDGE_TEST_N_THREADS, **overrides
        )  # type: ignore[arg-type]
        tracing = build_tracing(
            TracingConfig(service_name=SERVICE_NAME), processor=SimpleSpanProcessor(exporter)
        )
        app = create_app(settings, tracing=tracing)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        node = InProcessNode(url=str(server.make_url("")).rstrip("/"), app=app, settings=settings)
        await node.wait_ready(http)
        return node

    yield start
    for server in reversed(servers):
        await server.close()


def _attrs(span: ReadableSpan) -> dict[str, object]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in (span.attributes or {}).items()}


def _tree(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, list[ReadableSpan]]:
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    children = sorted(
        (s for s in spans if s.parent is not None and s.parent.span_id == server.context.span_id),
        key=lambda s: s.start_time or 0,
    )
    return server, children


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, object]) -> str:
    async with http.post(
        url + "/v1/chat/completions", json=body, headers={"traceparent": TRACEPARENT}
    ) as response:
        assert response.status == 200, await response.text()
        return await response.text()


async def _settled(exporter: InMemorySpanExporter, servers: int = 1) -> None:
    # The response reaches the client just before the handler (and its span) returns.
    for _ in range(500):
        if sum(s.kind is SpanKind.SERVER for s in exporter.get_finished_spans()) >= servers:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("request span not ended")


@pytest.mark.parametrize("stream", [False, True])
async def test_phases_are_children_of_the_request_span_under_the_given_traceparent(
    traced_node, exporter: InMemorySpanExporter, http: aiohttp.ClientSession, stream: bool
) -> None:
    node = await traced_node(exporter)
    body = chat_body(max_tokens=6, ignore_eos=True, stream=stream)
    if stream:
        body["stream_options"] = {"include_usage": True}
    await _post(http, node.url, body)
    await _settled(exporter)

    server, phases = _tree(exporter)
    assert format(server.context.trace_id, "032x") == TRACE
    assert server.parent is not None and format(server.parent.span_id, "016x") == PARENT
    assert server.name == "POST /v1/chat/completions"
    assert server.resource.attributes["service.name"] == "edge-node"
    assert [s.name for s in phases] == PHASES
    assert all(format(s.context.trace_id, "032x") == TRACE for s in phases)
    queue, prompt, generation = phases
    # One after the other, inside the request.
    assert server.start_time <= queue.start_time
    assert queue.end_time == prompt.start_time
    assert prompt.end_time == generation.start_time
    assert generation.end_time <= server.end_time
    assert prompt.end_time > prompt.start_time  # evaluating a prompt takes time

    p, g, s = _attrs(prompt), _attrs(generation), _attrs(server)
    assert p["gen_ai.usage.input_tokens"] > 5
    assert (
        p["edge.prompt.evaluated_tokens"] + p["edge.prompt.cached_tokens"]
        == (p["gen_ai.usage.input_tokens"])
    )
    assert g["gen_ai.usage.output_tokens"] == 6
    assert g["gen_ai.response.finish_reasons"] == ["length"]
    assert s["http.response.status_code"] == 200
    assert s["edge.outcome"] == "ok"
    assert s["gen_ai.provider.name"] == "llama.cpp"
    assert "error.type" not in s


async def test_a_queued_request_waits_for_the_one_generating(
    traced_node, exporter: InMemorySpanExporter, http: aiohttp.ClientSession
) -> None:
    node = await traced_node(exporter, parallel=1)  # one at a time: the second queues
    first = asyncio.create_task(_post(http, node.url, chat_body(max_tokens=24, ignore_eos=True)))
    await node.wait_for_metric("edge_requests_in_flight", 1)  # the first one is admitted
    await node.wait_for_metric("edge_queue_depth", 0)  # ...and taken by the worker
    await _post(http, node.url, chat_body("Say bye.", max_tokens=2, ignore_eos=True))
    await first
    await _settled(exporter, servers=2)

    spans = exporter.get_finished_spans()
    queues = sorted(
        (s for s in spans if s.name == "edge.queue_wait"), key=lambda s: s.start_time or 0
    )
    generations = sorted(
        (s for s in spans if s.name == "edge.generation"), key=lambda s: s.start_time or 0
    )
    # The second waited until the first finished generating (2 ms of clock slack).
    assert queues[1].end_time >= generations[0].end_time - 2_000_000
    assert (queues[1].end_time - queues[1].start_time) > (queues[0].end_time - queues[0].start_time)


async def test_a_refused_request_has_no_phases_and_is_not_a_server_error(
    traced_node, exporter: InMemorySpanExporter, http: aiohttp.ClientSession
) -> None:
    node = await traced_node(exporter)
    body = chat_body("word " * 3000)  # past the 2048-token window
    async with http.post(
        node.url + "/v1/chat/completions", json=body, headers={"traceparent": TRACEPARENT}
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "context_length_exceeded"
    await _settled(exporter)

    server, phases = _tree(exporter)
    assert phases == []
    s = _attrs(server)
    assert s["http.response.status_code"] == 400
    assert s["edge.outcome"] == "context_length_exceeded"
    assert server.status.status_code is StatusCode.UNSET
    assert "word word" not in json.dumps(s)  # the prompt is never on a span


async def test_one_trace_spans_gateway_and_edge_node(
    traced_node, exporter: InMemorySpanExporter, make_gateway, http: aiohttp.ClientSession
) -> None:
    node = await traced_node(exporter)
    gateway_tracing = build_gateway_tracing(
        TracingConfig(service_name=GATEWAY_SERVICE_NAME), processor=SimpleSpanProcessor(exporter)
    )
    gateway = await make_gateway(
        policy_yaml([(node.url, node.settings.served_model_name)], []),
        health_checks=False,
        tracing=gateway_tracing,
    )
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key="x", max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=4,
            stream=True,
            extra_headers={"traceparent": TRACEPARENT},
        )
        [c async for c in stream]
    await _settled(exporter, servers=2)

    spans = exporter.get_finished_spans()
    assert {format(s.context.trace_id, "032x") for s in spans} == {TRACE}
    by_service: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        by_service.setdefault(str(span.resource.attributes["service.name"]), []).append(span)
    assert set(by_service) == {"hybrid-gateway", "edge-node"}
    (attempt,) = [s for s in by_service["hybrid-gateway"] if s.kind is SpanKind.CLIENT]
    (edge_server,) = [s for s in by_service["edge-node"] if s.kind is SpanKind.SERVER]
    assert edge_server.parent is not None
    assert edge_server.parent.span_id == attempt.context.span_id  # node under the attempt
    assert {s.name for s in by_service["edge-node"]} == {"POST /v1/chat/completions", *PHASES}
    assert _attrs(attempt)["gen_ai.usage.output_tokens"] == 4


def test_edge_tracing_settings_from_env(model_path: Path) -> None:
    argv = ["--model", str(model_path)]
    assert not parse_settings(argv, {}).tracing.enabled
    settings = parse_settings(
        argv, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SERVICE_NAME": "e1"}
    )
    assert settings.tracing.exporters == {"otlp"}
    assert settings.tracing.otlp_endpoint == "http://collector:4318/v1/traces"
    assert settings.tracing.service_name == "e1"
    assert tracing_config_from_env({}).service_name == "edge-node"
    with pytest.raises(SystemExit):
        parse_settings(argv, {"OTEL_TRACES_EXPORTER": "jaeger"})
    tracing: EdgeTracing = build_tracing(tracing_config_from_env({}))
    assert not tracing.enabled


def test_console_tree_prints_the_edge_nodes_spans_as_a_tree(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``OTEL_TRACES_EXPORTER=console-tree`` works for the edge node as for the gateway, so
    one environment can serve both processes."""
    config = tracing_config_from_env({"OTEL_TRACES_EXPORTER": "console-tree"})
    assert config.exporters == {"console-tree"}
    tracing = build_tracing(config)
    with tracing.tracer.start_as_current_span("POST /v1/chat/completions"):
        with tracing.tracer.start_as_current_span("edge.generation"):
            pass
    tracing.shutdown()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    (root,) = [i for i, line in enumerate(lines) if "POST /v1/chat/completions" in line]
    (child,) = [i for i, line in enumerate(lines) if "edge.generation" in line]
    assert child == root + 1  # the child's line follows its parent's, indented further
    assert lines[child].index("edge.generation") > lines[root].index("POST /v1/")
