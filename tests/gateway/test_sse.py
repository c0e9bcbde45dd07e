"""Reading server-sent events from a real response (a loopback aiohttp server, read
through the gateway's client for nodes), however the bytes are cut."""

from __future__ import annotations

import asyncio

import pytest

from gateway.upstream.sse import MAX_EVENT_BYTES, DeadlineReached, EventTooLarge, SseReader
from tests.helpers import node_get, serve_sse_blocks


async def _read_all(blocks: list[bytes], pause_s: float = 0.0) -> list[bytes]:
    server = await serve_sse_blocks(blocks, pause_s)
    try:
        async with node_get(server) as r:
            reader = SseReader(r.content, idle_s=2.0)
            out = []
            while (data := await reader.next()) is not None:
                out.append(data)
            return out
    finally:
        await server.close()


STREAM = (
    b'data: {"a":1}\n\n: keep-alive\n\nevent: x\nid: 7\ndata: line1\ndata:line2\n\ndata: [DONE]\n\n'
)
EXPECTED = [b'{"a":1}', b"line1\nline2", b"[DONE]"]


@pytest.mark.parametrize("size", [1, 2, 5, 13, len(STREAM)])
async def test_events_come_out_whole_however_the_bytes_are_split(size: int) -> None:
    blocks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert await _read_all(blocks, pause_s=0.001) == EXPECTED


async def test_crlf_line_ends_even_split_between_cr_and_lf() -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")
    cut = crlf.index(b"\r\n\r\n") + 1  # the first CR in one block, its LF in the next
    assert await _read_all([crlf[:cut], crlf[cut:]], pause_s=0.001) == EXPECTED


async def test_a_last_event_without_its_blank_line_still_counts() -> None:
    assert await _read_all([b"data: a\n\ndata: b"]) == [b"a", b"b"]


async def test_what_arrived_with_an_event_is_there_without_waiting() -> None:
    server = await serve_sse_blocks([b"data: 1\n\ndata: 2\n\n"], hold_s=0.5)
    try:
        async with node_get(server) as r:
            reader = SseReader(r.content, idle_s=2.0)
            assert reader.take_arrived() == []
            assert await reader.next() == b"1"
            assert reader.take_arrived() == [b"2"]  # both arrived in one block
            assert reader.take_arrived() == []
    finally:
        await server.close()


async def test_take_arrived_hands_over_every_event_in_at_once() -> None:
    block = b"data: 1\n\n: note\n\ndata: 2\ndata: 3\n\ndata: 4\n\ndata: 5"
    server = await serve_sse_blocks([block], hold_s=0.5)
    try:
        async with node_get(server) as r:
            reader = SseReader(r.content, idle_s=2.0)
            assert reader.take_arrived() == []  # nothing read yet
            assert await reader.next() == b"1"
            # The rest of the block, in order; "5" has no blank line yet, so it waits.
            assert reader.take_arrived() == [b"2\n3", b"4"]
            assert reader.take_arrived() == []
    finally:
        await server.close()


async def test_a_stall_is_a_timeout_and_the_callers_deadline_is_its_own() -> None:
    server = await serve_sse_blocks([b"data: 1\n\n"], hold_s=2.0)
    try:
        async with node_get(server) as r:
            reader = SseReader(r.content, idle_s=0.2)
            assert await reader.next() == b"1"
            with pytest.raises(TimeoutError):
                await reader.next()  # idle for 0.2 s: the stream stalled
        async with node_get(server) as r:
            reader = SseReader(r.content, idle_s=5.0)
            assert await reader.next() == b"1"
            deadline = asyncio.get_running_loop().time() + 0.2
            with pytest.raises(DeadlineReached):
                await reader.next(deadline=deadline)  # the deadline comes first
    finally:
        await server.close()


async def test_a_long_event_in_many_blocks_comes_out_whole() -> None:
    payload = b"x" * 300_000
    stream = b"data: " + payload + b"\n\ndata: [DONE]\n\n"
    blocks = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    assert await _read_all(blocks) == [payload, b"[DONE]"]


async def test_an_event_that_never_ends_is_refused_not_buffered_forever() -> None:
    block = b"data: " + b"x" * 65536
    server = await serve_sse_blocks([block] * (MAX_EVENT_BYTES // 65536 + 2))
    try:
        async with node_get(server) as r:
            reader = SseReader(r.content, idle_s=2.0)
            with pytest.raises(EventTooLarge):
                await reader.next()
    finally:
        await server.close()
