"""A response body as its bytes arrive: taken all at once, or awaited."""

from __future__ import annotations

import asyncio

from gateway.upstream.http1.errors import HttpError

HIGH_WATER_BYTES = 256 * 1024
"""Unread bytes at which the connection stops reading from its socket, so that a client
that reads slowly holds the node back (TCP flow control) instead of filling memory."""


class ResponseBody:
    """The bytes of one response body. The connection appends to it; the reader takes
    whatever has arrived with :meth:`take_buffered`, or waits with :meth:`readany`."""

    __slots__ = ("_buffer", "_eof", "_error", "_loop", "_paused", "_size", "_transport", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport) -> None:
        self._loop = loop
        self._transport = transport
        self._buffer: list[bytes] = []
        self._size = 0
        self._eof = False
        self._error: HttpError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    # -- the connection's side ------------------------------------------------------------

    def extend(self, pieces: list[bytes]) -> None:
        """Add bytes (no empty piece); the reader is woken by :meth:`wake` once a whole
        read is taken in."""
        self._buffer.extend(pieces)
        self._size += sum(map(len, pieces))
        if self._size > HIGH_WATER_BYTES and not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def end(self) -> None:
        """The body is complete."""
        self._eof = True
        self.wake()

    def fail(self, error: HttpError) -> None:
        """The body will not be complete: raised to the reader once the bytes before it
        are taken. A body already complete stays so."""
        if self._eof:
            return
        self._error = error
        self.wake()

    # -- the reader's side ----------------------------------------------------------------

    def at_eof(self) -> bool:
        """The whole body arrived and was taken."""
        return self._eof and not self._buffer

    def take_buffered(self) -> bytes:
        """Every byte that has arrived and not been taken (``b""`` if none); raises the
        transport's :class:`HttpError` once nothing before it is left."""
        buffer = self._buffer
        if not buffer:
            if self._error is not None:
                raise self._error
            return b""
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        self._size = 0
        if self._paused:
            self._paused = False
            if not self._transport.is_closing():
                self._transport.resume_reading()
        return data

    async def readany(self) -> bytes:
        """What has arrived, waiting for something if nothing has; ``b""`` at the end."""
        while not self._buffer and not self._eof and self._error is None:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.take_buffered()

    async def read(self) -> bytes:
        """The rest of the body, whole."""
        pieces = []
        while piece := await self.readany():
            pieces.append(piece)
        return b"".join(pieces)


__all__ = ["HIGH_WATER_BYTES", "ResponseBody"]
