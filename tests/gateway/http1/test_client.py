"""The gateway's client for nodes (gateway/upstream/http1) against real loopback servers:
scripted TCP servers that write exact bytes, and an aiohttp server for TLS. Every test runs
on asyncio's loop and on uvloop (conftest.py)."""

from __future__ import annotations

import asyncio
import gzip
import re
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.upstream.http1 import (
    ConnectFailed,
    ConnectionLost,
    Connections,
    InvalidRequestHeader,
    MalformedResponse,
    Response,
)
from gateway.upstream.http1.body import HIGH_WATER_BYTES
from gateway.upstream.http1.connection import MAX_HEAD_BYTES
from gateway.upstream.http1.pool import origin_of
from gateway.upstream.sse import SseReader
from tests.fixtures.redis import free_port
from tests.helpers import eventually, node_get, serve_sse_blocks

Respond = Callable[[asyncio.StreamWriter], Awaitable[bool]]
"""Writes one response; False closes the connection after it."""


class ScriptedServer:
    """A loopback HTTP/1.1 server that answers every request with ``respond`` and keeps
    what it was sent: the requests' bytes, and how many connections were opened."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests: list[bytes] = []
        self.connections = 0
        self.closed = 0
        self.url = ""
        self.writers: set[asyncio.StreamWriter] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"Content-Length: (\d+)", head)
                body = await reader.readexactly(int(length.group(1)) if length else 0)
                self.requests.append(head + body)
                if not await self.respond(writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.closed += 1


@asynccontextmanager
async def scripted(respond: Respond) -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer(respond)
    tcp = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{tcp.sockets[0].getsockname()[1]}"
    try:
        yield server
    finally:
        tcp.close()
        for writer in server.writers:  # the connections still open end their handlers
            writer.close()
        await eventually(lambda: server.closed == server.connections, what="handlers ended")


def answer(*pieces: bytes, pause_s: float = 0.0, keep: bool = True) -> Respond:
    """Write ``pieces`` one by one (``pause_s`` apart: separate reads on the other end)."""

    async def respond(writer: asyncio.StreamWriter) -> bool:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            if pause_s:
                await asyncio.sleep(pause_s)
        return keep

    return respond


def chunked(*parts: bytes, head: bytes = b"") -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + head + b"\r\n" + body + b"0\r\n\r\n"
    )


def with_length(body: bytes, head: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), head, body)


@pytest.fixture
async def connections() -> AsyncIterator[Connections]:
    pool = Connections(asyncio.get_running_loop(), limit=8, keepalive_s=30)
    yield pool
    await pool.close()


async def post(connections: Connections, url: str, body: bytes = b"{}", **headers: str) -> Response:
    return await connections.request(
        "POST", url, "/v1/chat/completions", body=body, headers=headers, connect_timeout_s=5
    )


async def fetch(connections: Connections, url: str) -> bytes:
    return await (await post(connections, url)).read()


# -- framing ----------------------------------------------------------------------------

EVENTS = [b'data: {"n": %d}\n\n' % i for i in range(20)]


@pytest.mark.parametrize("piece", [1, 3, 7, 64, 10_000])
async def test_a_chunked_body_comes_out_whole_however_the_bytes_are_cut(
    connections: Connections, piece: int
) -> None:
    raw = chunked(*EVENTS)
    pieces = [raw[i : i + piece] for i in range(0, len(raw), piece)]
    async with scripted(answer(*pieces, pause_s=0.0005)) as server:
        response = await post(connections, server.url)
        assert response.status == 200
        assert await response.read() == b"".join(EVENTS)
        assert response.content.at_eof()
        assert await fetch(connections, server.url) == b"".join(EVENTS)
        assert server.connections == 1  # kept alive and reused


async def test_chunk_extensions_and_trailers_are_read_past(connections: Connections) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    async with scripted(answer(raw)) as server:
        assert await fetch(connections, server.url) == b"hello"
        assert await fetch(connections, server.url) == b"hello"
        assert server.connections == 1


async def test_a_content_length_body_then_the_next_request_on_the_same_connection(
    connections: Connections,
) -> None:
    async with scripted(answer(with_length(b'{"ok": true}', b"X-Id: 1\r\n"))) as server:
        response = await post(connections, server.url, body=b'{"a": 1}', **{"X-Request-Id": "r1"})
        assert response.headers["x-id"] == "1"  # names are case-insensitive
        assert await response.read() == b'{"ok": true}'
        assert await fetch(connections, server.url) == b'{"ok": true}'
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    port = server.url.rsplit(":", 1)[1].encode()
    for field in (b"Host: 127.0.0.1:" + port, b"Content-Length: 8", b"X-Request-Id: r1"):
        assert field + b"\r\n" in first
    assert b"Accept-Encoding: identity\r\n" in first
    assert first.endswith(b'\r\n\r\n{"a": 1}')


async def test_informational_heads_are_skipped_and_a_204_has_no_body(
    connections: Connections,
) -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    async with scripted(answer(early + with_length(b"x"))) as server:
        assert await fetch(connections, server.url) == b"x"
    async with scripted(answer(b"HTTP/1.1 204 No Content\r\n\r\n")) as server:
        response = await post(connections, server.url)
        assert (response.status, await response.read()) == (204, b"")
        assert await fetch(connections, server.url) == b""
        assert server.connections == 1


async def test_a_body_without_length_ends_with_the_connection(connections: Connections) -> None:
    async with scripted(answer(b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"the end", keep=False)) as server:
        assert await fetch(connections, server.url) == b"until the end"
        assert await fetch(connections, server.url) == b"until the end"
        assert server.connections == 2  # such a connection is never reused


@pytest.mark.parametrize(
    "head", [b"Connection: close\r\n", b"Connection: keep-alive, Close\r\n"], ids=["close", "list"]
)
async def test_a_node_that_says_close_gets_a_new_connection(
    connections: Connections, head: bytes
) -> None:
    async with scripted(answer(with_length(b"x", head), keep=False)) as server:
        assert await fetch(connections, server.url) == b"x"
        assert await fetch(connections, server.url) == b"x"
        assert server.connections == 2


async def test_an_http_1_0_answer_is_not_kept(connections: Connections) -> None:
    async with scripted(answer(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx")) as server:
        assert await fetch(connections, server.url) == b"x"
        assert await fetch(connections, server.url) == b"x"
        assert server.connections == 2


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_compressed_body_is_decompressed(connections: Connections, coding: str) -> None:
    text = b"".join(EVENTS)
    packed = gzip.compress(text) if coding == "gzip" else zlib.compress(text)
    head = b"Content-Encoding: %s\r\n" % coding.encode()
    async with scripted(answer(chunked(packed[:10], packed[10:], head=head))) as server:
        assert await fetch(connections, server.url) == text


async def test_a_compressed_body_cut_short_is_refused(connections: Connections) -> None:
    packed = gzip.compress(b"".join(EVENTS))
    head = b"Content-Encoding: gzip\r\n"
    async with scripted(answer(with_length(packed[: len(packed) // 2], head))) as server:
        response = await post(connections, server.url)
        with pytest.raises(MalformedResponse):
            await response.read()


# -- what is refused ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"y" * MAX_HEAD_BYTES + b"\r\n\r\n",
    ],
    ids=[
        "status-line",
        "header",
        "two-lengths",
        "negative-length",
        "brotli",
        "101",
        "transfer-gzip",
        "huge",
    ],
)
async def test_a_malformed_head_is_refused(connections: Connections, raw: bytes) -> None:
    async with scripted(answer(raw)) as server:
        with pytest.raises(MalformedResponse):
            await post(connections, server.url)
        await eventually(lambda: server.closed == 1, what="the connection closed")


@pytest.mark.parametrize(
    "body",
    [b"zz\r\nhello\r\n0\r\n\r\n", b"2\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\nextra"],
    ids=["size-not-hex", "data-longer-than-size", "bytes-after-the-end"],
)
async def test_a_malformed_chunked_body_is_refused_and_not_reused(
    connections: Connections, body: bytes
) -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    async with scripted(answer(raw)) as server:
        response = await post(connections, server.url)
        if body.endswith(b"extra"):  # the body itself is whole
            assert await response.read() == b"hello"
        else:
            with pytest.raises(MalformedResponse):
                await response.read()
        await eventually(lambda: server.closed == 1, what="the connection closed")


async def test_a_body_cut_off_raises_after_what_came_before(connections: Connections) -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    async with scripted(answer(raw, keep=False)) as server:
        response = await post(connections, server.url)
        assert await response.content.readany() == b"hello"
        with pytest.raises(ConnectionLost):
            await response.content.readany()
        assert not response.content.at_eof()


async def test_a_node_that_closes_before_answering(connections: Connections) -> None:
    async def hang_up(writer: asyncio.StreamWriter) -> bool:
        return False

    async with scripted(hang_up) as server:
        with pytest.raises(ConnectionLost):
            await post(connections, server.url)


async def test_nobody_listening_is_a_connect_failure(connections: Connections) -> None:
    with pytest.raises(ConnectFailed) as caught:
        await post(connections, f"http://127.0.0.1:{free_port()}")
    assert isinstance(caught.value.os_error, ConnectionRefusedError)


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\0b"])
async def test_a_header_that_would_break_the_framing_is_not_sent(
    connections: Connections, value: str
) -> None:
    async with scripted(answer(with_length(b"x"))) as server:
        with pytest.raises(InvalidRequestHeader):
            await post(connections, server.url, **{"X-Request-Id": value})
        assert await fetch(connections, server.url) == b"x"  # the next request is fine
        assert len(server.requests) == 1


# -- the pool -------------------------------------------------------------------------------


async def test_a_connection_the_node_closed_while_idle_is_not_used(
    connections: Connections,
) -> None:
    # The node closes each connection right after its answer (as a server whose keep-alive
    # ran out does), without saying so in the head.
    async with scripted(answer(with_length(b"x"), keep=False)) as server:
        assert await fetch(connections, server.url) == b"x"
        await eventually(lambda: server.closed == 1, what="the node closed the connection")
        await eventually(
            lambda: not any(c.is_open() for c in connections._open), what="the client noticed"
        )
        assert await fetch(connections, server.url) == b"x"
        assert server.connections == 2


async def test_an_idle_connection_past_its_keepalive_is_not_reused_and_is_closed() -> None:
    pool = Connections(asyncio.get_running_loop(), limit=8, keepalive_s=0.2)
    try:
        async with scripted(answer(with_length(b"x"))) as server:
            assert await fetch(pool, server.url) == b"x"
            await asyncio.sleep(0.25)  # past the keep-alive: the next request opens another
            assert await fetch(pool, server.url) == b"x"
            assert server.connections == 2
            # Both are closed by the pool in time, with no request to notice them.
            await eventually(lambda: server.closed == 2, what="both closed", timeout_s=3)
            assert not pool._open
    finally:
        await pool.close()


async def test_at_the_limit_an_idle_connection_makes_room_and_a_busy_one_is_waited_for() -> None:
    pool = Connections(asyncio.get_running_loop(), limit=1, keepalive_s=30)
    try:
        async with (
            scripted(answer(with_length(b"a"))) as a,
            scripted(answer(with_length(b"b"))) as b,
        ):
            assert await fetch(pool, a.url) == b"a"  # kept idle, holding the only slot
            assert await fetch(pool, b.url) == b"b"  # a's idle connection made room
            await eventually(lambda: a.closed == 1, what="a's idle connection closed")
            held = await post(pool, a.url)
            await eventually(lambda: b.closed == 1, what="b's idle connection closed")
            waiting = asyncio.create_task(fetch(pool, b.url))
            await eventually(lambda: pool._waiting == 1, what="a call waiting for a slot")
            # held's connection, read whole, is closed for the waiting call, not kept idle.
            assert await held.read() == b"a"
            assert await asyncio.wait_for(waiting, 5) == b"b"
            assert (a.connections, b.connections) == (2, 2)
    finally:
        await pool.close()


async def test_a_node_url_with_a_path_and_credentials(connections: Connections) -> None:
    async with scripted(answer(with_length(b"x"))) as server:
        url = server.url.replace("http://", "http://user:pass@") + "/prefix"
        assert await fetch(connections, url) == b"x"
    first = server.requests[0]
    assert first.startswith(b"POST /prefix/v1/chat/completions HTTP/1.1\r\n")
    assert b"Authorization: Basic dXNlcjpwYXNz\r\n" in first  # user:pass


async def test_an_unread_body_holds_the_node_back_until_it_is_read(
    connections: Connections,
) -> None:
    body = b"x" * (8 * HIGH_WATER_BYTES)
    parts = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    async with scripted(answer(chunked(*parts))) as server:
        response = await post(connections, server.url)
        content = response.content
        await eventually(lambda: content._size > HIGH_WATER_BYTES, what="a full buffer")
        (connection,) = connections._open
        assert connection.transport is not None
        assert not connection.transport.is_reading()  # paused: the node's writes back up
        assert await response.read() == body


# -- TLS ------------------------------------------------------------------------------------


TLS = Path(__file__).parent / "tls"
"""A self-signed certificate for 127.0.0.1 and its key, for these tests only (made once
with ``openssl req -x509 -newkey rsa:2048 -nodes -days 36500 -subj /CN=127.0.0.1 -addext
subjectAltName=IP:127.0.0.1``; valid until 2126)."""


async def test_an_https_node_is_called_over_tls_and_its_certificate_checked() -> None:
    cert, key = TLS / "cert.pem", TLS / "key.pem"
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=server_context)
    url = f"https://127.0.0.1:{server.port}"
    loop = asyncio.get_running_loop()
    ours = ssl.create_default_context(cafile=str(cert))
    trusting = Connections(loop, limit=2, keepalive_s=30, ssl_context=ours)
    default = Connections(loop, limit=2, keepalive_s=30)  # the system's CAs: not this one
    try:
        assert await fetch(trusting, url) == b"{}"
        with pytest.raises(ConnectFailed) as caught:
            await post(default, url)
        assert isinstance(caught.value.os_error, ssl.SSLCertVerificationError)
    finally:
        await trusting.close()
        await default.close()
        await server.close()


async def test_a_connect_that_takes_too_long_is_a_timeout_not_a_failure(blackhole: str) -> None:
    # TimeoutError is an OSError: it must not become ConnectFailed.
    pool = Connections(asyncio.get_running_loop(), limit=2, keepalive_s=30)
    try:
        with pytest.raises(TimeoutError):
            await pool.request("POST", blackhole, "/", headers={}, connect_timeout_s=0.2)
        assert not pool._open and not pool._slots.locked()  # its slot was given back
    finally:
        await pool.close()


# -- the body as the SSE reader takes it (from the aiohttp-era tests/gateway/test_buffered_body.py)


async def test_every_buffered_chunk_comes_out_at_once_and_the_reader_is_left_at_the_end() -> None:
    # One HTTP chunk per event, as a node sends one event per token.
    server = await serve_sse_blocks(EVENTS)
    try:
        async with node_get(server) as response:
            content = response.content
            await eventually(lambda: content._eof, what="the whole body buffered")
            assert content.take_buffered() == b"".join(EVENTS)
            assert content.at_eof()
            assert content.take_buffered() == b""
            assert await content.read() == b""
    finally:
        await server.close()


async def test_a_reader_held_back_by_a_full_buffer_is_resumed() -> None:
    # 2,000 events of ~1 KiB, about eight times the high-water mark: the connection stops
    # reading whenever the buffer is full; a take that did not resume it would stall until
    # the idle timeout.
    events = 2000
    server = await serve_sse_blocks([f"data: {i:01000d}\n\n".encode() for i in range(events)])
    try:
        async with node_get(server) as response:
            await eventually(lambda: response.content._paused, what="a full buffer")
            reader = SseReader(response.content, idle_s=5.0)
            seen = []
            while (data := await reader.next()) is not None:
                seen.append(int(data))
            assert seen == list(range(events))
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("url", "host", "port", "tls", "prefix", "host_field"),
    [
        ("http://node:8000", "node", 8000, False, "", "node:8000"),
        ("http://node", "node", 80, False, "", "node"),
        ("https://node/base/", "node", 443, True, "/base", "node"),
        ("http://[::1]:8001", "::1", 8001, False, "", "[::1]:8001"),
    ],
)
def test_where_a_node_url_points(
    url: str, host: str, port: int, tls: bool, prefix: str, host_field: str
) -> None:
    origin = origin_of(url)
    assert (origin.host, origin.port, origin.tls, origin.path_prefix) == (host, port, tls, prefix)
    assert origin.fixed_headers.startswith(f"Host: {host_field}\r\n")


@pytest.mark.parametrize("url", ["ftp://node", "http://", "node:8000"])
def test_a_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        origin_of(url)
