"""Reading server-sent events from an upstream, one ``data`` payload at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp

DONE = b"[DONE]"


async def iter_sse_data(content: aiohttp.StreamReader, *, idle_s: float) -> AsyncIterator[bytes]:
    """Yield each event's ``data`` (multi-line data joined by newlines), ``DONE`` included.

    Comments, ``event:``/``id:`` fields and blank keep-alives are skipped. Each wait for the
    next line is bounded by ``idle_s``; :class:`TimeoutError` means the stream stalled.
    """
    data: list[bytes] = []
    while True:
        async with asyncio.timeout(idle_s):
            line = await content.readline()
        if not line:  # end of stream
            if data:
                yield b"\n".join(data)
            return
        line = line.rstrip(b"\r\n")
        if not line:
            if data:
                yield b"\n".join(data)
                data = []
            continue
        if line.startswith(b"data:"):
            payload = line[5:]
            data.append(payload[1:] if payload.startswith(b" ") else payload)
