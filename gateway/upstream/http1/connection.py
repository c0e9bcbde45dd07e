"""One connection to a node: a request out, its response's head and body framing in.

The response is read as RFC 9112 says a client reads one: a status line and header
fields up to a blank line (informational 1xx heads skipped), then a body framed by
chunked transfer coding, by Content-Length, or by the close of the connection, and
decompressed where the node used gzip or deflate although it was asked for identity.
Whatever does not fit (a head past :data:`MAX_HEAD_BYTES`, a chunk size that is not hex,
differing Content-Lengths, bytes nobody asked for) fails the response with
:class:`MalformedResponse`, and the connection is closed, never reused.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from multidict import CIMultiDict

from gateway.upstream.http1.body import ResponseBody
from gateway.upstream.http1.errors import ConnectionLost, HttpError, MalformedResponse

MAX_HEAD_BYTES = 64 * 1024
"""The longest response head read (status line and header fields)."""
MAX_LINE_BYTES = 4 * 1024
"""The longest chunk-size or trailer line read."""

_STATUS_LINE = re.compile(r"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: [^\r\n]*)?")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?")
_DIGITS = re.compile(r"[0-9]{1,18}")

# What the connection is doing.
_IDLE, _HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE, _CLOSED = range(6)


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A response's status and header fields, and its body as it arrives."""

    status: int
    headers: CIMultiDict[str]
    body: ResponseBody


class Connection(asyncio.Protocol):
    """A keep-alive connection that carries one request at a time (:meth:`send`)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_closed: Callable[[Connection], None]
    ) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.reusable = False
        """The last response was read whole and the node keeps the connection open."""
        self.idle_since = 0.0
        self._on_closed = on_closed
        self._state = _IDLE
        self._waiter: asyncio.Future[ResponseHead] | None = None
        self._body: ResponseBody | None = None
        self._keep_alive = False
        self._pending = b""
        """Bytes read but not yet parsed: a head, a chunk-size line or a trailer in part."""
        self._left = 0
        """Body bytes still to come (Content-Length), or of the current chunk's data."""
        self._chunk_end = False
        """A chunk's data was read; its CRLF is next."""
        self._trailers = False
        """The last chunk was read; trailer fields up to a blank line are next."""
        self._decoder: zlib._Decompress | None = None

    def is_open(self) -> bool:
        """Not closed, nor closing."""
        transport = self.transport
        return self._state != _CLOSED and transport is not None and not transport.is_closing()

    def send(self, request: bytes) -> asyncio.Future[ResponseHead]:
        """Write a whole request; the future is its response's head, once it arrived."""
        assert self.transport is not None and self._state == _IDLE
        self._state = _HEAD
        self.reusable = False
        self._waiter = self.loop.create_future()
        self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A socket transport (uvloop's do not derive from asyncio.Transport).
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        state, self._state = self._state, _CLOSED
        self.reusable = False
        why = f": {exc}" if exc is not None else ""
        if state == _HEAD:
            self._fail(ConnectionLost(f"the node closed the connection before answering{why}"))
        elif state in (_LENGTH, _CHUNKED):
            self._fail(ConnectionLost(f"the connection closed in the middle of the body{why}"))
        elif state == _UNTIL_CLOSE:
            self._end_body(keep_alive=False)
        self._on_closed(self)

    def data_received(self, data: bytes) -> None:
        try:
            if self._state == _HEAD:
                data = self._head(data)
            if not data:
                return
            state = self._state
            if state == _CHUNKED:
                self._chunked(data)
            elif state == _LENGTH:
                self._length(data)
            elif state == _UNTIL_CLOSE:
                self._add([data])
                self._wake()
            elif state == _IDLE:  # nothing was asked: the connection's state is unknown
                raise MalformedResponse("the node sent bytes that answer no request")
        except HttpError as exc:
            self._fail(exc)
            self.close()

    # -- the head -------------------------------------------------------------------------

    def _head(self, data: bytes) -> bytes:
        """Read the head from ``data``; the bytes after it (the body's first)."""
        while True:
            if self._pending:
                data, self._pending = self._pending + data, b""
            end = data.find(b"\r\n\r\n")
            if (len(data) if end < 0 else end) > MAX_HEAD_BYTES:
                raise MalformedResponse(f"a response head longer than {MAX_HEAD_BYTES} bytes")
            if end < 0:
                self._pending = data
                return b""
            minor, status, headers = _parse_head(data[:end])
            data = data[end + 4 :]
            if status >= 200:
                break
            if status == 101:
                raise MalformedResponse("the node switched protocols (101), unasked")
            # 100 Continue, 103 Early Hints: the answer's own head follows.
        self._keep_alive = minor == 1 and "close" not in _tokens(headers.get("Connection"))
        self._decoder = _decoder(headers.get("Content-Encoding"))
        assert self.transport is not None and self._waiter is not None
        body = self._body = ResponseBody(self.loop, self.transport)
        self._frame(status, headers)
        waiter, self._waiter = self._waiter, None
        if not waiter.done():  # not cancelled
            waiter.set_result(ResponseHead(status, headers, body))
        return data

    def _frame(self, status: int, headers: CIMultiDict[str]) -> None:
        """How the body ends (RFC 9112, section 6.3)."""
        encoding = headers.get("Transfer-Encoding")
        if status in (204, 304):
            self._end_body(self._keep_alive)
        elif encoding is not None:
            if _tokens(encoding)[-1:] == ["chunked"]:
                self._state = _CHUNKED
                self._left, self._chunk_end, self._trailers = 0, False, False
                # With a Content-Length beside it the framing is ambiguous: not reused.
                self._keep_alive = self._keep_alive and "Content-Length" not in headers
            else:  # gzip alone, say: no node sends it, and it would need decoding too
                raise MalformedResponse(f"a Transfer-Encoding without chunked: {encoding!r}")
        elif "Content-Length" in headers:
            lengths = {value.strip() for value in headers.getall("Content-Length")}
            length = lengths.pop()
            if lengths or _DIGITS.fullmatch(length) is None:
                raise MalformedResponse(f"an invalid Content-Length: {length!r}")
            self._left = int(length)
            self._state = _LENGTH
            if self._left == 0:
                self._end_body(self._keep_alive)
        else:
            self._state = _UNTIL_CLOSE

    # -- the body -------------------------------------------------------------------------

    def _length(self, data: bytes) -> None:
        if len(data) < self._left:
            self._left -= len(data)
            self._add([data])
            self._wake()
            return
        extra = len(data) > self._left
        self._add([data[: self._left]])
        self._left = 0
        self._end_body(self._keep_alive and not extra)
        if extra:  # bytes nobody asked for: what the connection carries next is unknown
            self.close()

    def _chunked(self, data: bytes) -> None:
        if self._pending:
            data, self._pending = self._pending + data, b""
        pieces: list[bytes] = []
        at, size, left = 0, len(data), self._left
        while at < size:
            if left:  # in a chunk's data
                end = min(size, at + left)
                pieces.append(data[at:end])
                left -= end - at
                self._chunk_end = left == 0
                at = end
                continue
            eol = data.find(b"\r\n", at)
            if eol < 0:
                if size - at > MAX_LINE_BYTES:
                    raise MalformedResponse(f"a chunk line longer than {MAX_LINE_BYTES} bytes")
                self._pending = data[at:]
                break
            if self._chunk_end:
                if eol != at:
                    raise MalformedResponse("a chunk's data is longer than its size")
                self._chunk_end = False
            elif self._trailers:
                if eol == at:  # the blank line: the body is complete
                    self._add(pieces)
                    extra = eol + 2 < size
                    self._end_body(self._keep_alive and not extra)
                    if extra:  # as in _length
                        self.close()
                    return
            else:
                match = _CHUNK_SIZE.fullmatch(data, at, eol)
                if match is None:
                    raise MalformedResponse(f"an invalid chunk size line: {data[at:eol][:40]!r}")
                left = int(match.group(1), 16)
                end = eol + 2 + left
                if left and data.startswith(b"\r\n", end):
                    # The whole chunk, its CRLF included (a node's token event, nearly always).
                    pieces.append(data[eol + 2 : end])
                    left, at = 0, end + 2
                    continue
                self._trailers = left == 0
            at = eol + 2
        self._left = left
        self._add(pieces)
        self._wake()

    def _add(self, pieces: list[bytes]) -> None:
        assert self._body is not None
        if self._decoder is not None:
            try:
                plain = self._decoder.decompress(b"".join(pieces))
            except zlib.error as exc:
                raise MalformedResponse(f"the body does not decompress: {exc}") from None
            pieces = [plain] if plain else []
        self._body.extend(pieces)

    def _wake(self) -> None:
        assert self._body is not None
        self._body.wake()

    def _end_body(self, keep_alive: bool) -> None:
        if self._state != _CLOSED:
            self._state = _IDLE
        assert self._body is not None
        if self._decoder is not None and not self._decoder.eof:
            self.reusable = False
            self._body.fail(MalformedResponse("the compressed body ends before its stream does"))
            return
        self.reusable = keep_alive and self._state == _IDLE
        self._body.end()

    def _fail(self, error: HttpError) -> None:
        self.reusable = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            if not waiter.done():
                waiter.set_exception(error)
        elif self._body is not None:
            self._body.fail(error)


def _parse_head(raw: bytes) -> tuple[int, int, CIMultiDict[str]]:
    """(HTTP/1 minor version, status, header fields); the reason phrase is not kept."""
    lines = raw.decode("latin-1").split("\r\n")
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise MalformedResponse(f"not an HTTP/1 status line: {lines[0][:80]!r}")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or "\n" in line or "\r" in line:
            raise MalformedResponse(f"an invalid header line: {line[:80]!r}")
        headers.add(name, value.strip(" \t"))
    return int(match.group(1)), int(match.group(2)), headers


def _tokens(value: str | None) -> list[str]:
    """The comma-separated tokens of a header value, lower-cased."""
    return [token.strip().lower() for token in value.split(",")] if value else []


def _decoder(encoding: str | None) -> zlib._Decompress | None:
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        return None
    if coding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # a gzip or a zlib header, detected
    raise MalformedResponse(f"the body is {coding}-encoded, which the gateway cannot read")


__all__ = ["MAX_HEAD_BYTES", "MAX_LINE_BYTES", "Connection", "ResponseHead"]
