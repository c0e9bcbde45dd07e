"""Reading server-sent events from an upstream, one ``data`` payload at a time.

The reader takes whatever bytes have arrived in one go and splits them into events
itself: a node that sends twenty events in one TCP segment costs one read
(:meth:`~gateway.upstream.http1.ResponseBody.take_buffered`), not forty ``readline``
calls each under its own timeout. :meth:`SseReader.take_arrived` hands over every event
already in, so a relay can pass several on in one write.
"""

from __future__ import annotations

import asyncio
import collections
import re

from gateway.upstream.http1 import HttpError, ResponseBody
from gateway.upstream.loop_timeout import LoopTimeout

DONE = b"[DONE]"


MAX_EVENT_BYTES = 4 * 1024 * 1024
"""The longest event a node may send (a token per event is a few hundred bytes)."""

_EVENT_END = re.compile(rb"\n\r?\n")
"""Where an event may end (LF LF, or CRLF CRLF whose CR was already dropped or not)."""


class EventTooLarge(HttpError):
    """A node sent more than :data:`MAX_EVENT_BYTES` without ending an event."""


class DeadlineReached(Exception):
    """The caller's deadline passed while waiting (not the stream's fault)."""


class SseReader:
    """The ``data`` of each event (multi-line data joined by newlines), ``DONE`` included.

    Comments, ``event:``/``id:`` fields and blank keep-alives are skipped. Each wait for
    more bytes is bounded by ``idle_s``: :class:`TimeoutError` means the stream stalled.
    Transport errors are :class:`~gateway.upstream.http1.HttpError`; the caller
    translates them. ``loop`` is the one the stream is read on (default: the running
    loop; see :mod:`gateway.upstream.loop_timeout`).
    """

    def __init__(
        self,
        content: ResponseBody,
        *,
        idle_s: float,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._content = content
        self._idle_s = idle_s
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        """The loop the stream is read on; its time is every deadline's here."""
        self._events: collections.deque[bytes] = collections.deque()
        self._tail = b""
        """Bytes of an event whose closing blank line has not arrived yet..."""
        self._pieces: list[bytes] = []
        """...and the blocks after it, still without one: joined once one ends the event."""
        self._pending = 0
        """The bytes in the tail and the pieces."""
        self._ended = False

    def take_arrived(self) -> list[bytes]:
        """The data of every event that has arrived already, in order (maybe none): a
        reader of a whole buffered answer takes it in one call, not one per event."""
        events = list(self._events)
        self._events.clear()
        return events

    async def next(self, *, deadline: float | None = None) -> bytes | None:
        """The next event's data; None at the end of the stream. A wait that reaches
        ``deadline`` (event-loop time) before ``idle_s`` raises :class:`DeadlineReached`."""
        while not self._events:
            if self._ended:
                return None
            block = self._content.take_buffered()
            if not block and not self._content.at_eof():
                block = await self._wait(deadline)
            if block:
                self._feed(block)
            else:
                self._end()
        return self._events.popleft()

    async def _wait(self, deadline: float | None) -> bytes:
        # One timer for both bounds: the sooner of the idle deadline and the caller's.
        idle_at = self.loop.time() + self._idle_s
        if deadline is None or idle_at < deadline:
            async with LoopTimeout(self.loop, idle_at):
                return await self._content.readany()
        try:
            async with LoopTimeout(self.loop, deadline):
                return await self._content.readany()
        except TimeoutError:
            raise DeadlineReached from None

    def _feed(self, block: bytes) -> None:
        last = self._pieces[-1] if self._pieces else self._tail
        if last and _EVENT_END.search(last[-3:] + block) is None:
            # Still inside one (long) event: keep the block, and search each byte once.
            self._pieces.append(block)
            self._pending += len(block)
            self._check_size()
            return
        text = b"".join((self._tail, *self._pieces, block))
        self._pieces = []
        if b"\r" in text:
            # CRLF line ends; a CR split from its LF stays in the tail until the LF comes.
            text = text.replace(b"\r\n", b"\n")
        if text.startswith(b"data: ") and text.endswith(b"\n\n"):
            # Nearly every block: whole events of one ``data:`` line each, split in one go
            # (the count proves that every line break is one of the separators).
            payloads = text[6:-2].split(b"\n\ndata: ")
            if text.count(b"\n") == 2 * len(payloads):
                self._tail, self._pending = b"", 0
                self._events.extend(payloads)
                return
        events = text.split(b"\n\n")
        self._tail = events.pop()
        self._pending = len(self._tail)
        self._check_size()
        for event in events:
            self._event(event)

    def _check_size(self) -> None:
        if self._pending > MAX_EVENT_BYTES:
            raise EventTooLarge(
                f"an event longer than {MAX_EVENT_BYTES} bytes (no blank line ends it)"
            )

    def _event(self, raw: bytes) -> None:
        """One event's lines (its closing blank line removed)."""
        if raw.startswith(b"data: ") and b"\n" not in raw:
            self._events.append(raw[6:])  # nearly every event: one data line
            return
        data = [
            line[6:] if line.startswith(b"data: ") else line[5:]
            for line in raw.split(b"\n")
            if line.startswith(b"data:")
        ]
        if data:
            self._events.append(b"\n".join(data))

    def _end(self) -> None:
        """The body ended: what was read of a last event without its blank line counts."""
        if self._tail:
            tail = b"".join((self._tail, *self._pieces))
            self._event(tail.rstrip(b"\r\n"))
            self._tail, self._pieces, self._pending = b"", [], 0
        self._ended = True


__all__ = ["DONE", "MAX_EVENT_BYTES", "DeadlineReached", "EventTooLarge", "SseReader"]
