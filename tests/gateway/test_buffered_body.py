"""take_buffered() against read_nowait() on real responses from a loopback aiohttp server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.upstream.buffered_body import JOINS_ITSELF, take_buffered
from gateway.upstream.sse import SseReader
from tests.helpers import eventually, serve_sse_blocks

CHUNKS = [f'data: {{"n": {i}}}\n\n'.encode() for i in range(20)]


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    # One HTTP chunk per event, as a node sends one event per token.
    test_server = await serve_sse_blocks(CHUNKS)
    yield test_server
    await test_server.close()


def test_the_locked_aiohttp_has_what_the_single_join_needs() -> None:
    # Fails on an aiohttp upgrade that renames the reader's fields: the gateway would still
    # work (read_nowait() takes over) but lose the saving; look at buffered_body.py again.
    assert JOINS_ITSELF


async def _whole_body_buffered(response: aiohttp.ClientResponse) -> None:
    await eventually(response.content.is_eof, what="the whole body buffered")


@pytest.mark.parametrize("take", [take_buffered, aiohttp.StreamReader.read_nowait])
async def test_every_buffered_chunk_comes_out_at_once_and_the_reader_is_left_at_the_end(
    server: TestServer, take: Callable[[aiohttp.StreamReader], bytes]
) -> None:
    async with aiohttp.ClientSession() as session, session.get(server.make_url("/")) as r:
        await _whole_body_buffered(r)
        assert r.content.total_bytes == sum(map(len, CHUNKS))
        assert take(r.content) == b"".join(CHUNKS)
        assert r.content.at_eof()
        assert take_buffered(r.content) == b""
        assert await r.content.read() == b""


async def test_a_first_chunk_read_in_part_is_not_read_twice(server: TestServer) -> None:
    async with aiohttp.ClientSession() as session, session.get(server.make_url("/")) as r:
        await _whole_body_buffered(r)
        head = r.content.read_nowait(4)
        assert head + take_buffered(r.content) == b"".join(CHUNKS)
        assert r.content.at_eof()


async def test_many_chunks_are_joined_without_read_nowait(
    server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with aiohttp.ClientSession() as session, session.get(server.make_url("/")) as r:
        await _whole_body_buffered(r)

        def refuse(self: aiohttp.StreamReader, n: int = -1) -> bytes:
            raise AssertionError("read_nowait() was called for a many-chunk buffer")

        monkeypatch.setattr(aiohttp.StreamReader, "read_nowait", refuse)
        assert take_buffered(r.content) == b"".join(CHUNKS)


async def test_a_reader_held_back_by_a_full_buffer_is_resumed() -> None:
    # 2,000 events of ~1 KiB through a 4 KiB read buffer: aiohttp pauses the connection
    # whenever the buffer is full; a take that did not resume it would stall until the
    # idle timeout.
    events = 2000
    server = await serve_sse_blocks([f"data: {i:01000d}\n\n".encode() for i in range(events)])
    try:
        async with (
            aiohttp.ClientSession(read_bufsize=4096) as session,
            session.get(server.make_url("/")) as r,
        ):
            # Let the buffer fill past aiohttp's high-water mark (twice the read buffer),
            # where it stops reading from the socket until the reader takes the bytes.
            await eventually(lambda: r.content.total_bytes > 2 * 4096, what="a full buffer")
            reader = SseReader(r.content, idle_s=5.0)
            seen = []
            while (data := await reader.next()) is not None:
                seen.append(int(data))
            assert seen == list(range(events))
    finally:
        await server.close()
