"""Structured logs: one JSON access line per request, with its request id and trace id."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import aiohttp
import pytest

from gateway.http import middlewares
from gateway.logs import JsonFormatter, TextFormatter, configure_logging, request_id_var
from tests.conftest import policy_yaml
from tests.gateway.observability.conftest import SIMPLE, Spans, trace_hex
from tests.helpers import sdk
from tests.scripted import unused_port


@pytest.fixture(params=["sole handler", "beside others"])
def access_lines(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[io.StringIO]:
    """What ``gateway.access`` logs at INFO, formatted as JSON lines: by the only handler
    its lines reach (as under ``serve``: :func:`~gateway.logs.log_fields` writes them
    without a LogRecord), and beside the test run's handlers (a record goes through
    logging)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    if request.param == "sole handler":
        # A logger of the same name that pytest does not know, so it adds no handlers of
        # its own to it; one that makes no LogRecord.
        logger = logging.Logger("gateway.access", logging.INFO)
        logger.addHandler(handler)

        def no_record(*args: object, **kwargs: object) -> logging.LogRecord:
            raise AssertionError("the access line was made a LogRecord")

        monkeypatch.setattr(logger, "makeRecord", no_record)
        monkeypatch.setattr(middlewares, "access_log", logger)
        yield stream
        return
    logger = logging.getLogger("gateway.access")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _entries(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_access_line_carries_request_and_trace_ids(
    upstreams, make_gateway, spans: Spans, access_lines: io.StringIO
) -> None:
    edge = await upstreams("edge-model")
    gateway = await make_gateway(
        policy_yaml([(edge.url, "edge-model")], []), health_checks=False, tracing=spans.tracing
    )
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=SIMPLE, extra_headers={"x-request-id": "req-abc-1"}
        )
        stream = await client.chat.completions.with_raw_response.create(
            model="auto", messages=SIMPLE, stream=True
        )
        [c async for c in stream.parse()]
    await spans.settled(servers=2)

    first, second = _entries(access_lines)
    assert raw.headers["x-request-id"] == "req-abc-1"
    assert first["request_id"] == "req-abc-1"
    assert second["request_id"] == stream.headers["x-request-id"]
    assert len(str(second["request_id"])) == 32  # a new one when the client sent none
    servers = sorted(
        (s for s in spans.all() if s.name.startswith("POST")), key=lambda s: s.start_time or 0
    )
    assert [first["trace_id"], second["trace_id"]] == [trace_hex(s) for s in servers]
    assert first["span_id"] == format(servers[0].context.span_id, "016x")
    for entry in (first, second):
        assert entry["logger"] == "gateway.access"
        assert entry["level"] == "INFO"
        assert entry["method"] == "POST"
        assert entry["path"] == "/v1/chat/completions"
        assert entry["status"] == 200
        assert entry["tier"] == "edge" and entry["node"] == "edge-1"
        assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] > 0
        assert str(entry["message"]).startswith("POST /v1/chat/completions 200 ")


async def test_without_tracing_lines_carry_the_request_id_only(
    upstreams, make_gateway, access_lines: io.StringIO
) -> None:
    dead = f"http://127.0.0.1:{unused_port()}"
    gateway = await make_gateway(policy_yaml([(dead, "edge-model")], []), health_checks=False)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "auto", "messages": SIMPLE},
            headers={"x-request-id": "req-no-trace"},
        ) as response:
            assert response.status == 503
        async with http.get(gateway.url + "/healthz") as response:  # a probe: DEBUG, not here
            assert response.status == 200

    (entry,) = _entries(access_lines)
    assert entry["request_id"] == "req-no-trace"
    assert "trace_id" not in entry
    assert entry["status"] == 503
    assert entry["tier"] is None


async def test_other_log_lines_of_a_request_carry_its_ids(make_gateway, spans: Spans) -> None:
    # A warning the gateway logs while serving (every node down) has the request's ids.
    dead = f"http://127.0.0.1:{unused_port()}"
    gateway = await make_gateway(
        policy_yaml([(dead, "edge-model")], []), health_checks=False, tracing=spans.tracing
    )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gateway.http")
    logger.addHandler(handler)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                gateway.url + "/v1/chat/completions",
                json={"model": "auto", "messages": SIMPLE},
                headers={"x-request-id": "req-warn"},
            ) as response:
                assert response.status == 503
    finally:
        logger.removeHandler(handler)
    await spans.settled()

    (entry,) = _entries(stream)
    assert entry["level"] == "WARNING"
    assert entry["request_id"] == "req-warn"
    assert entry["trace_id"] == trace_hex(spans.server())


def test_formatters_and_configure_logging(capsys: pytest.CaptureFixture[str]) -> None:
    record = logging.LogRecord("gateway.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.tier = "edge"  # an ``extra`` field
    token = request_id_var.set("rid-1")
    try:
        entry = json.loads(JsonFormatter().format(record))
        text = TextFormatter().format(record)
    finally:
        request_id_var.reset(token)
    assert entry["message"] == "hello you"
    assert entry["request_id"] == "rid-1"
    assert entry["tier"] == "edge"
    assert "trace_id" not in entry  # no span is current here
    assert text.endswith("gateway.x: hello you [request_id=rid-1]")

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", "json")
        logging.getLogger("gateway.test").info("structured", extra={"n": 3})
        configure_logging("WARNING", "text")
        logging.getLogger("gateway.test").info("dropped below WARNING")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["n"] == 3
