"""Deletion wins over appends in flight: a session deleted while one of its turns is being
answered stays deleted, whether that turn is appended at once or replayed from the spool."""

from __future__ import annotations

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway.sessions.keys import SessionRef, generation_key, turns_key
from tests.gateway.sessions.conftest import ask, sid, spool_written_out
from tests.helpers import scrape_metrics
from tests.scripted import Script

pytestmark = pytest.mark.redis

SLOW = Script(chunks=("A", " slow", " answer", "."), chunk_delay_s=0.3)


async def second_turn_under_way(setup, client):
    """The session ``forget-me`` holds one turn, and a second one (a slow answer, streamed)
    has just begun: its chunks, none read yet."""
    setup.edge.script = Script(behaviour="echo")
    await ask(client, sid("forget-me", "edge"), "my first secret")
    setup.edge.queue.append(SLOW)
    stream = await client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "my second secret"}],
        stream=True,
        extra_headers=sid("forget-me", "edge"),
    )
    return aiter(stream)


async def session_status(setup, session: str, method: str = "GET") -> int:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"{setup.gateway.url}/v1/sessions/{session}") as response:
            return response.status


async def redis_keys(url: str, session: str) -> tuple[int, list[bytes]]:
    raw = aioredis.Redis.from_url(url)
    try:
        ref = SessionRef(session)
        return await raw.llen(turns_key(ref)), sorted(await raw.keys(f"gw:{{{session}}}*"))
    finally:
        await raw.aclose()


async def test_a_session_deleted_mid_stream_stays_deleted(redis_server, make_sessions) -> None:
    setup = await make_sessions(redis_server.url)
    async with setup.client() as client:
        chunks = await second_turn_under_way(setup, client)
        first = await anext(chunks)  # the answer is under way
        assert await session_status(setup, "forget-me", "DELETE") == 204
        rest = [chunk async for chunk in chunks]  # to [DONE]: the turn's append has run
    text = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
    assert text == "A slow answer."  # the client was served in full
    assert await session_status(setup, "forget-me") == 404
    # In Redis: no turn, no marker, only the tombstone.
    assert await redis_keys(redis_server.url, "forget-me") == (
        0,
        [generation_key(SessionRef("forget-me")).encode()],
    )
    after = await scrape_metrics(setup.gateway)
    assert after.value("gateway_session_erased_appends_total") == 1
    # The next turn starts the session afresh, without the deleted history.
    async with setup.client() as client:
        raw = await ask(client, sid("forget-me", "edge"), "hello again")
    assert raw.parse().choices[0].message.content == "[1] hello again"
    assert (await redis_keys(redis_server.url, "forget-me"))[0] == 2


async def test_a_turn_spooled_after_a_deletion_is_not_replayed(redis_server, make_sessions) -> None:
    """The deletion lands, then Redis freezes before the in-flight turn is appended: the
    turn waits in the spool, and its replay is refused like the append would have been."""
    setup = await make_sessions(redis_server.url)
    async with setup.client() as client:
        chunks = await second_turn_under_way(setup, client)
        await anext(chunks)
        assert await session_status(setup, "forget-me", "DELETE") == 204
        redis_server.pause()
        try:
            _ = [chunk async for chunk in chunks]
            during = await scrape_metrics(setup.gateway)
            assert during.value("gateway_session_spool_turns") == 2  # the turn is spooled
        finally:
            redis_server.resume()
    now = await spool_written_out(setup.gateway)
    # Refused at the replay (and, if the frozen append ran after all, there as well).
    assert now.value("gateway_session_erased_appends_total") == 1
    assert now.value("gateway_session_replayed_turns_total") == 0
    assert await session_status(setup, "forget-me") == 404
    assert (await redis_keys(redis_server.url, "forget-me"))[0] == 0
