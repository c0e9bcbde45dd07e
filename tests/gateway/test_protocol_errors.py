"""Every error answer is OpenAI-style JSON, aiohttp's own included: malformed requests
sent over raw sockets to a gateway on the runner ``python -m gateway serve`` uses."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiohttp import web

from gateway.http.server import GatewayRunner
from tests.helpers import policy_yaml

CHAT = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"


@pytest.fixture
async def gateway(upstreams, make_gateway):
    edge = await upstreams("edge-model")
    gw = await make_gateway(
        policy_yaml([(edge.url, "edge-model")], [], limits={"max_body_bytes": 4096}),
        health_checks=False,
    )
    return gw, edge


async def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the answer until the server closes; status, headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {
                name.lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines if line)
            }
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length)
    finally:
        writer.close()
    return int(status_line.split(" ")[1]), headers, body


def assert_openai_error(headers: dict[str, str], body: bytes) -> dict[str, object]:
    assert headers["content-type"].startswith("application/json")
    assert len(headers["x-request-id"]) >= 16
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    return error


MALFORMED = [
    ("garbage-line", b"GARBAGE\r\n\r\n"),
    ("tls-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n"),
    ("bad-method", b"G\x00T / HTTP/1.1\r\nHost: gw\r\n\r\n"),
    ("bad-version", b"GET /healthz HTTP/7.3\r\nHost: gw\r\n\r\n"),
    ("header-no-colon", b"GET /healthz HTTP/1.1\r\nHost: gw\r\nNoColonHere\r\n\r\n"),
    ("header-space-before-colon", b"GET /healthz HTTP/1.1\r\nHost : gw\r\n\r\n"),
    ("header-ctl", b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-A: a\x01b\r\n\r\n"),
    ("line-too-long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n"),
    (
        "header-too-long",
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
    ),
    (
        "too-many-headers",
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
        + b"\r\n",
    ),
    ("bad-content-length", CHAT + b"Content-Length: ten\r\n\r\n"),
    ("two-content-lengths", CHAT + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
    ("length-and-chunked", CHAT + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}"),
    ("unknown-transfer-encoding", CHAT + b"Transfer-Encoding: rot13\r\n\r\n{}"),
]


@pytest.mark.parametrize("request_bytes", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
async def test_a_request_aiohttp_cannot_parse_is_an_openai_style_400(
    gateway, request_bytes: bytes
) -> None:
    gateway, edge = gateway
    status, headers, body = await exchange(gateway.server.port, request_bytes)
    assert status == 400
    error = assert_openai_error(headers, body)
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "bad_request",
        None,
    )
    assert edge.calls == 0


@pytest.mark.parametrize(
    "chunked",
    [b"zz\r\n{}\r\n0\r\n\r\n", b"2\r\n{}XX0\r\n\r\n", b"-1\r\n{}\r\n0\r\n\r\n"],
    ids=["size-not-hex", "no-crlf-after-data", "negative-size"],
)
async def test_broken_chunked_framing_is_an_openai_style_400(gateway, chunked: bytes) -> None:
    gateway, edge = gateway
    request = CHAT + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, headers, body = await exchange(gateway.server.port, request + chunked)
    assert status == 400
    error = assert_openai_error(headers, body)
    assert error["type"] == "invalid_request_error"
    assert edge.calls == 0


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /nothing HTTP/1.1\r\nHost: gw\r\n\r\n", 404, "not_found"),
        (b"PUT /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n", 405,
         "method_not_allowed"),
        (CHAT + b"Content-Length: 999999\r\n\r\n{}", 413, "request_too_large"),
    ],
)  # fmt: skip
async def test_router_and_size_errors_are_openai_style(
    gateway, request_bytes: bytes, status: int, code: str
) -> None:
    gateway, _ = gateway
    got, headers, body = await exchange(gateway.server.port, request_bytes)
    assert got == status
    assert assert_openai_error(headers, body)["code"] == code
    if status == 405:
        assert headers["allow"] == "POST"


async def test_an_exception_that_escapes_the_middlewares_is_an_openai_style_500() -> None:
    # The app's errors middleware catches everything behind it; this one fails in front.
    @web.middleware
    async def broken(request: web.Request, handler: object) -> web.StreamResponse:
        raise RuntimeError("bug in front of the errors middleware")

    app = web.Application(middlewares=[broken])
    runner = GatewayRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        status, headers, body = await exchange(port, b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
    finally:
        await runner.cleanup()
    assert status == 500
    error = assert_openai_error(headers, body)
    assert (error["type"], error["code"]) == ("server_error", "internal_error")
    assert error["message"] == "Internal gateway error."  # nothing of the exception leaks


async def test_a_body_that_does_not_decode_logs_no_traceback(
    gateway, caplog: pytest.LogCaptureFixture
) -> None:
    # After the 400, aiohttp drains the rest of the body, meets the same decoding error
    # again and logged it as an "Unhandled exception" with a traceback, per request.
    gateway, _ = gateway
    body = b'{"messages": [{"role": "user", "content": "hi"}]}'
    request = CHAT + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.server.port)
    try:
        writer.write(request + body)
        async with asyncio.timeout(10):
            answer = await reader.read()  # to the end: the server closed the connection
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b'"code": "invalid_request"' in answer
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
