"""Taking every block of an upstream body that has arrived, in one step.

A node streams one HTTP chunk per token, and aiohttp keeps each chunk as its own buffer
entry. ``StreamReader.read_nowait()`` (aiohttp 3.14) hands them back one entry at a time,
and after each entry it calls the connection's ``resume_reading()``, which runs the HTTP
parser again on ``b""`` and touches the transport, paused or not: for a 20-token answer
that is twenty parser and transport calls where one does. Measured with
``bench/overhead.py`` (same rounds, this against ``read_nowait()``): 2-6% less gateway CPU
per request at concurrency 16, where several chunks wait in the buffer, and none
measurable at concurrency 1 (docs/benchmarks.md).

:func:`take_buffered` returns the same bytes and leaves the reader as ``read_nowait()``
would (the bytes consumed, the read timeout checked, HTTP chunk bookkeeping trimmed, and
``resume_reading()`` called under the same condition, once), by joining the entries
itself. It relies on the reader's own fields, so it checks at import that the installed
aiohttp has them, and otherwise (or for a reader of another class) it is
``read_nowait()``. aiohttp is pinned in ``locks/``; ``tests/gateway/test_buffered_body.py``
compares both ways on real responses, flow control included.
"""

from __future__ import annotations

from typing import Any, cast

import aiohttp

_FIELDS = frozenset(
    (
        "_buffer",
        "_buffer_offset",
        "_size",
        "_cursor",
        "_http_chunk_splits",
        "_low_water",
        "_low_water_chunks",
        "_protocol",
        "_exception",
        "_waiter",
        "_timer",
    )
)
JOINS_ITSELF = _FIELDS.issubset(getattr(aiohttp.StreamReader, "__slots__", ()))
"""Whether this aiohttp's reader has the fields :func:`take_buffered` uses."""


def take_buffered(content: aiohttp.StreamReader) -> bytes:
    """Everything buffered now (``b""`` if nothing), as ``content.read_nowait()``."""
    reader = cast(Any, content)
    if (
        not JOINS_ITSELF
        or type(content) is not aiohttp.StreamReader
        or len(reader._buffer) < 2  # one entry: read_nowait() is the same work
        or reader._exception is not None
        or reader._waiter is not None
    ):
        return content.read_nowait()  # and its errors, as they are
    reader._timer.assert_timeout()
    buffer = reader._buffer
    if reader._buffer_offset:  # a part of the first entry was read already
        buffer[0] = buffer[0][reader._buffer_offset :]
        reader._buffer_offset = 0
    data: bytes = b"".join(buffer)
    buffer.clear()
    reader._size -= len(data)
    reader._cursor += len(data)
    splits = reader._http_chunk_splits
    while splits and splits[0] < reader._cursor:  # chunk ends now behind the reader
        splits.popleft()
    if reader._size < reader._low_water and (
        splits is None or len(splits) < reader._low_water_chunks
    ):
        reader._protocol.resume_reading()
    return data


__all__ = ["JOINS_ITSELF", "take_buffered"]
