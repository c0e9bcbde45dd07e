"""The console trace printer: one line per span, indented as a tree, printed when the
trace's root ends; a bounded buffer for traces whose root never comes."""

from __future__ import annotations

import asyncio
import io
import re

import aiohttp
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from gateway.telemetry import TracingConfig, build_tracing, tracing_config_from_env
from gateway.telemetry.config import SERVICE_NAME
from gateway.telemetry.propagation import extract_context
from hybrid_common.console_tree import TreeConsoleSpanExporter
from tests.conftest import policy_yaml
from tests.gateway.observability.conftest import SIMPLE, sdk
from tests.helpers import REPO_ROOT, serve_process
from tests.scripted import Script, unused_port

LINE = re.compile(r"^ *(?P<start>[+-]\d+\.\d) +(?P<duration>\d+\.\d) ms  (?P<tree>.*)$")


def _lines(text: str) -> list[tuple[float, float, str]]:
    """(start ms, duration ms, tree text) of each span line; the header is checked apart."""
    out = []
    for line in text.splitlines()[1:]:
        match = LINE.match(line)
        assert match, f"not a span line: {line!r}"
        out.append((float(match["start"]), float(match["duration"]), match["tree"]))
    return out


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _tracer(exporter: TreeConsoleSpanExporter):  # type: ignore[no-untyped-def]
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test")


async def test_a_request_that_fell_back_prints_as_one_tree(upstreams, make_gateway) -> None:
    out = io.StringIO()
    tracing = build_tracing(
        TracingConfig(service_name=SERVICE_NAME),
        processor=SimpleSpanProcessor(TreeConsoleSpanExporter(out)),
    )
    edge, cloud = await upstreams("edge-model"), await upstreams("cloud-model")
    edge.script = Script(behaviour="status", status=500)
    gateway = await make_gateway(
        policy_yaml([(edge.url, "edge-model")], [(cloud.url, "cloud-model")]),
        health_checks=False,
        tracing=tracing,
    )
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto",
            messages=SIMPLE,  # type: ignore[arg-type]
            extra_headers={"x-request-id": "req-tree"},
        )
    assert raw.headers["x-gateway-tier"] == "cloud"
    for _ in range(200):  # the root span ends just after the response is sent
        if "POST /v1/chat/completions" in out.getvalue():
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail(f"no trace printed within 2 s: {out.getvalue()!r}")

    text = out.getvalue()
    header = text.splitlines()[0]
    assert re.fullmatch(r"trace [0-9a-f]{32} hybrid-gateway", header), header
    lines = _lines(text)
    reason = raw.headers["x-gateway-route-reason"]
    trees = [tree for _, _, tree in lines]
    assert trees == [
        f'POST /v1/chat/completions  status=200 route=edge reason="{reason}" score=0.0003 '
        "tier=cloud node=cloud-1 fallback=edge-1:status_5xx,edge-1:status_5xx",
        f'├─ gateway.classify  reason="{reason}" score=0.0003 tier=edge',
        "├─ chat edge-model  status=500 tier=edge node=edge-1 error=status_5xx",
        "├─ chat edge-model  status=500 tier=edge node=edge-1 retry error=status_5xx",
        "└─ chat cloud-model  tier=cloud node=cloud-1 tokens=5/5",
    ]
    starts = [start for start, _, _ in lines]
    assert starts[0] == 0.0 and starts == sorted(starts)  # children in start order
    root_duration = lines[0][1]
    assert all(0.0 <= duration <= root_duration for _, duration, _ in lines)


def test_nested_spans_indent_under_their_parent() -> None:
    out = io.StringIO()
    tracer = _tracer(TreeConsoleSpanExporter(out))
    with tracer.start_as_current_span("root"):
        with tracer.start_as_current_span("a") as a:
            a.set_attribute("gateway.node", "edge-1")
            with tracer.start_as_current_span("a1"):
                pass
            with tracer.start_as_current_span("a2") as a2:
                a2.set_status(Status(StatusCode.ERROR, "boom"))
        assert out.getvalue() == ""  # nothing before the root ends
        with tracer.start_as_current_span("b") as b:
            b.set_attribute("error.type", "timeout")
            with tracer.start_as_current_span("b1") as b1:
                b1.set_attribute("gateway.route_reason", 'rule "long" prompt')
    assert [tree for _, _, tree in _lines(out.getvalue())] == [
        "root",
        "├─ a  node=edge-1",
        "│  ├─ a1",
        "│  └─ a2  error=boom",
        "└─ b  error=timeout",
        '   └─ b1  reason="rule \\"long\\" prompt"',
    ]


def test_a_span_continuing_a_remote_parent_is_a_root() -> None:
    out = io.StringIO()
    tracer = _tracer(TreeConsoleSpanExporter(out))
    context = extract_context(
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    )
    with tracer.start_as_current_span("server", context=context):
        with tracer.start_as_current_span("child"):
            pass
    text = out.getvalue()
    assert text.splitlines()[0].startswith("trace 0af7651916cd43dd8448eb211c80319c")
    assert [tree for _, _, tree in _lines(text)] == ["server", "└─ child"]


def test_traces_whose_root_never_ends_are_printed_after_max_age_or_at_the_cap() -> None:
    out, clock = io.StringIO(), Clock()
    exporter = TreeConsoleSpanExporter(out, max_spans=3, max_age_s=10.0, clock=clock)
    tracer = _tracer(exporter)
    stuck = tracer.start_span("stuck root")  # never ended within the test's window
    with tracer.start_as_current_span("orphan", context=_context_of(stuck)):
        pass
    assert out.getvalue() == ""
    clock.now = 10.0  # the next export looks at the age of what waits
    with tracer.start_as_current_span("other trace"):
        pass
    printed = ("\n" + out.getvalue()).split("\ntrace ")[1:]
    assert printed[0].splitlines()[0].endswith("(incomplete: its root span was not seen)")
    assert "orphan" in printed[0]
    assert "other trace" in printed[1]
    # The cap: a fourth buffered span pushes the oldest trace out, its root unseen.
    out.truncate(0)
    out.seek(0)
    first, second = tracer.start_span("first root"), tracer.start_span("second root")
    for name, root in (("a1", first), ("a2", first), ("b1", second)):
        with tracer.start_as_current_span(name, context=_context_of(root)):
            pass
    assert out.getvalue() == ""
    with tracer.start_as_current_span("b2", context=_context_of(second)):
        pass
    assert out.getvalue().count("(incomplete") == 1
    assert [tree for _, _, tree in _lines(out.getvalue())] == ["a1", "a2"]
    # At shutdown, what still waits is printed too.
    out.truncate(0)
    out.seek(0)
    exporter.shutdown()
    assert [tree for _, _, tree in _lines(out.getvalue())] == ["b1", "b2"]
    for span in (stuck, first, second):
        span.end()  # after shutdown: not printed
    assert [tree for _, _, tree in _lines(out.getvalue())] == ["b1", "b2"]


def _context_of(span):  # type: ignore[no-untyped-def]
    from opentelemetry import trace

    return trace.set_span_in_context(span)


def test_console_tree_is_an_exporter_name() -> None:
    config = tracing_config_from_env({"OTEL_TRACES_EXPORTER": "console-tree, otlp"})
    assert config.exporters == {"console-tree", "otlp"}
    with pytest.raises(ValueError, match="console-tree"):
        tracing_config_from_env({"OTEL_TRACES_EXPORTER": "tree"})


@pytest.mark.parametrize("how", ["flag", "env"])
async def test_serve_prints_the_tree_to_stderr(upstreams, how: str, monkeypatch) -> None:
    edge = await upstreams("env-edge-model")
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    env = {
        "GATEWAY_PORT": str(unused_port()),
        "GATEWAY_POLICY": str(REPO_ROOT / "policies" / "default.yaml"),
        "GATEWAY_EDGE_URLS": f"{edge.url}=env-edge-model",
        "GATEWAY_CLOUD_URLS": f"http://127.0.0.1:{unused_port()}=env-cloud-model",
        **({"OTEL_TRACES_EXPORTER": "console-tree"} if how == "env" else {}),
    }
    args = ["--console-trace"] if how == "flag" else []
    async with serve_process(env, *args) as served, aiohttp.ClientSession() as session:
        async with session.post(
            served.url + "/v1/chat/completions", json={"model": "auto", "messages": SIMPLE}
        ) as response:
            assert response.status == 200
    assert served.returncode == 0
    text = served.stderr
    assert re.search(r"\d ms  POST /v1/chat/completions  status=200 route=edge ", text), text
    assert re.search(r"\d ms  └─ chat env-edge-model  tier=edge node=edge-1 tokens=\d+/\d+", text)
