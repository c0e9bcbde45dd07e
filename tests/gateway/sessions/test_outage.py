"""Redis outages: requests are still served, turns wait in the spool, and once Redis is
back they arrive in order, exactly once. Real redis-server, stopped or frozen by PID."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway.metrics import GatewayMetrics
from gateway.policy.model import SessionsSpec
from gateway.policy.parse import parse_policy
from gateway.sessions.keys import SessionRef, turns_key
from gateway.sessions.service import SessionService
from gateway.sessions.spool import PendingAppend
from gateway.sessions.store import SessionStore
from gateway.state import SESSIONS
from tests.gateway.sessions.conftest import ask, seen_messages, sid, spool_written_out
from tests.helpers import eventually, policy_yaml, scrape_metrics
from tests.scripted import Script

pytestmark = pytest.mark.redis

WARNING = "x-gateway-session-warning"


async def redis_turns(url: str, session: str) -> list[str]:
    raw = aioredis.Redis.from_url(url)
    try:
        items = await raw.lrange(turns_key(SessionRef(session)), 0, -1)
    finally:
        await raw.aclose()
    return [f"{t['role']}:{t['content']}" for t in map(json.loads, items)]


async def wait_for_turns(url: str, session: str, count: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if len(await redis_turns(url, session)) >= count:
                return
        except (OSError, aioredis.ConnectionError):
            pass
        assert time.monotonic() < deadline, f"{session}: {count} turns never arrived"
        await asyncio.sleep(0.05)


def pairs(*texts: str) -> list[str]:
    """The stored form of echo answers to one message per request, request by request."""
    out: list[str] = []
    for text, size in texts:
        out += [f"user:{text}", f"assistant:[{size}] {text}"]
    return out


async def test_stopped_redis_spool_then_replay_in_order_exactly_once(
    redis_server, make_sessions
) -> None:
    setup = await make_sessions(redis_server.url)
    setup.edge.script = Script(behaviour="echo")
    async with setup.client() as client:
        raw = await ask(client, sid("out", "edge"), "one")
        assert WARNING not in raw.headers
        await asyncio.to_thread(redis_server.stop)
        raw = await ask(client, sid("out", "edge"), "two")
        assert raw.headers[WARNING] == "store-unavailable"
        stream = await client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "three"}], stream=True,
            extra_headers=sid("out", "edge"),
        )  # fmt: skip
        assert stream.headers[WARNING] == "store-unavailable"
        assert "".join(
            [c.choices[0].delta.content or "" async for c in stream.parse() if c.choices]
        )
        raw = await ask(client, sid("out", "edge"), "four")
        assert raw.headers[WARNING] == "store-unavailable"
        # Served without the stored history, but with this replica's own pending turns.
        assert [len(s.body["messages"]) for s in setup.edge.seen] == [1, 1, 3, 5]
        before = await scrape_metrics(setup.gateway)
        assert before.value("gateway_session_spooled_turns_total") == 6
        assert before.value("gateway_session_spool_turns") == 6
        assert before.value("gateway_session_store_errors_total", op="load") >= 1

        await asyncio.to_thread(redis_server.start)  # back, empty: it persisted nothing
        await wait_for_turns(redis_server.url, "out", 6)
        after = await spool_written_out(setup.gateway)
        assert await redis_turns(redis_server.url, "out") == pairs(
            ("two", 1), ("three", 3), ("four", 5)
        )
        assert after.value("gateway_session_replayed_turns_total") == 6
        assert after.value("gateway_session_spool_turns") == 0
        assert after.value("gateway_session_spool_dropped_turns_total") == 0

        raw = await ask(client, sid("out", "edge"), "five")
        assert WARNING not in raw.headers
        assert len(seen_messages(setup.edge)) == 7


async def test_frozen_redis_keeps_its_data_and_the_turns_arrive_in_order(
    redis_server, make_sessions
) -> None:
    setup = await make_sessions(redis_server.url)
    setup.edge.script = Script(behaviour="echo")
    async with setup.client() as client:
        await ask(client, sid("frz", "edge"), "one")
        redis_server.pause()
        try:
            started = time.monotonic()
            for text in ("two", "three", "four"):
                raw = await ask(client, sid("frz", "edge"), text)
                assert raw.headers[WARNING] == "store-unavailable"
            elapsed = time.monotonic() - started
            during = await scrape_metrics(setup.gateway)
        finally:
            redis_server.resume()
        # Only the first request waited for Redis (0.3 s deadline); the others knew it was
        # down and did not ask. Generous bound: the machine is shared.
        assert during.value("gateway_session_store_errors_total", op="load") == 1
        assert elapsed < 3.0
        await wait_for_turns(redis_server.url, "frz", 8)
        await spool_written_out(setup.gateway)
        assert await redis_turns(redis_server.url, "frz") == pairs(
            ("one", 1), ("two", 1), ("three", 3), ("four", 5)
        )


async def test_an_append_lost_in_flight_is_replayed_without_a_duplicate(
    redis_server, make_sessions
) -> None:
    """Redis freezes while the answer is generated: the append misses its deadline and is
    spooled, though its bytes may still reach Redis and run when it thaws. The idempotency
    marker makes the replay of that same request a no-op, so the turn is stored once."""
    setup = await make_sessions(redis_server.url)
    setup.edge.script = Script(behaviour="echo")
    setup.edge.queue.append(Script(behaviour="echo", first_token_delay_s=0.4))
    async with setup.client() as client:

        async def freeze_during_generation() -> None:
            # Once the upstream has the request, the history was loaded; it thinks for 0.4 s.
            await eventually(lambda: setup.edge.calls == 1, what="the upstream asked")
            redis_server.pause()

        freezer = asyncio.create_task(freeze_during_generation())
        await ask(client, sid("lost", "edge"), "one")
        await freezer
        try:
            await ask(client, sid("lost", "edge"), "two")
        finally:
            redis_server.resume()
        await wait_for_turns(redis_server.url, "lost", 4)
        # The frozen append's bytes were in Redis's buffer when it thawed: it ran before
        # Redis answered the replay of the same request, which emptied the spool.
        after = await spool_written_out(setup.gateway)
        assert await redis_turns(redis_server.url, "lost") == pairs(("one", 1), ("two", 3))
        assert after.value("gateway_session_store_errors_total", op="append") == 1


async def test_a_full_spool_drops_the_oldest_turns_and_counts_them(
    redis_server, make_sessions
) -> None:
    setup = await make_sessions(
        redis_server.url, sessions={"spool_max_turns": 4, "redis_timeout_s": 0.3}
    )
    setup.edge.script = Script(behaviour="echo")
    await asyncio.to_thread(redis_server.stop)
    async with setup.client() as client:
        for text in ("one", "two", "three"):
            await ask(client, sid("full", "edge"), text)
    during = await scrape_metrics(setup.gateway)
    assert during.value("gateway_session_spool_dropped_turns_total") == 2
    assert during.value("gateway_session_spool_turns") == 4
    await asyncio.to_thread(redis_server.start)
    await wait_for_turns(redis_server.url, "full", 4)
    await spool_written_out(setup.gateway)
    # The turns of "one" were dropped when "three" needed room (after it was answered
    # with them in its history: they were still pending then).
    assert await redis_turns(redis_server.url, "full") == pairs(("two", 3), ("three", 5))


async def test_the_gateway_starts_and_serves_while_redis_is_down(
    redis_server, make_sessions
) -> None:
    await asyncio.to_thread(redis_server.stop)
    setup = await make_sessions(redis_server.url)
    async with setup.client() as client:
        raw = await ask(client, sid("late", "edge"), "hello")
    assert raw.headers[WARNING] == "store-unavailable"
    assert raw.parse().choices[0].message.content == "Hello from the upstream."
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{setup.gateway.url}/v1/sessions/late") as response:
            assert response.status == 503
            assert response.headers["Retry-After"]
            assert (await response.json())["error"]["code"] == "session_store_unavailable"
    await asyncio.to_thread(redis_server.start)
    await wait_for_turns(redis_server.url, "late", 2)


async def test_replaying_a_request_that_is_already_stored_writes_nothing(redis_server) -> None:
    """The spool may hold a request whose write did land (the reply was what got lost)."""
    spec = SessionsSpec()
    metrics_ = GatewayMetrics()
    service = SessionService(
        store=SessionStore.from_url(redis_server.url), spec=lambda: spec, metrics=metrics_
    )
    try:
        turns = (
            {"role": "user", "content": "q", "request_id": "r1", "at": 1.0},
            {"role": "assistant", "content": "a", "request_id": "r1", "at": 1.0},
        )
        assert service.store is not None
        s = SessionRef("s")
        await service.store.append(
            s, "r1", turns, replace=False, ttl_s=60, max_turns=10, timeout_s=0.5
        )
        service.spool.push(PendingAppend(session=s, request_id="r1", turns=turns))
        service.spool.push(
            PendingAppend(session=s, request_id="r2", turns=(dict(turns[0], content="q2"),))
        )
        assert await service.drain()
        assert await redis_turns(redis_server.url, "s") == ["user:q", "assistant:a", "user:q2"]
        assert metrics_.registry.get_sample_value("gateway_session_replayed_turns_total") == 1
        assert len(service.spool) == 0
    finally:
        await service.aclose()


async def test_erasing_during_an_outage_forgets_the_pending_turns(
    redis_server, make_sessions
) -> None:
    """The client asked for the turns to be gone: the ones this replica holds go at once,
    even though Redis cannot be reached (503: retry the DELETE for the stored ones)."""
    setup = await make_sessions(redis_server.url)
    await asyncio.to_thread(redis_server.stop)
    async with setup.client() as client:
        await ask(client, sid("gone", "edge"), "secret")
    assert (await scrape_metrics(setup.gateway)).value("gateway_session_spool_turns") == 2
    async with aiohttp.ClientSession() as http:
        async with http.delete(f"{setup.gateway.url}/v1/sessions/gone") as response:
            assert response.status == 503
            assert response.headers["Retry-After"]
    assert (await scrape_metrics(setup.gateway)).value("gateway_session_spool_turns") == 0
    await asyncio.to_thread(redis_server.start)
    async with setup.client() as client:
        await ask(client, sid("after", "edge"), "canary")  # replayed or written after "gone"
    await wait_for_turns(redis_server.url, "after", 2)
    assert await redis_turns(redis_server.url, "gone") == []


async def test_a_key_redis_refuses_costs_that_session_only(redis_server, make_sessions) -> None:
    """Something else wrote a string at a session's key: Redis answers WRONGTYPE. That
    session is served without history and its turns are dropped (counted), rather than
    blocking the spool; the store stays in use for everyone else."""
    setup = await make_sessions(redis_server.url)
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        await raw.set(turns_key(SessionRef("clobbered")), "not a list")
    finally:
        await raw.aclose()
    async with setup.client() as client:
        broken = await ask(client, sid("clobbered", "edge"), "hi")
        fine = await ask(client, sid("fine", "edge"), "hi")
    assert broken.headers[WARNING] == "store-unavailable"
    assert broken.parse().choices[0].message.content == "Hello from the upstream."
    assert WARNING not in fine.headers
    assert len(await redis_turns(redis_server.url, "fine")) == 2
    after = await scrape_metrics(setup.gateway)
    assert after.value("gateway_session_store_errors_total", op="load") == 1
    assert after.value("gateway_session_store_errors_total", op="append") == 1
    assert after.value("gateway_session_spool_dropped_turns_total") == 2
    assert after.value("gateway_session_spool_turns") == 0


async def test_a_poisoned_spool_entry_is_set_aside_and_the_rest_replayed(
    redis_server, make_sessions, caplog: pytest.LogCaptureFixture
) -> None:
    """An entry that cannot be written (text UTF-8 cannot encode: a lone surrogate) used to
    kill the replayer silently, and with it every later replay. Now it is set aside,
    counted and logged (the session hashed, no text), and the replayer goes on."""
    setup = await make_sessions(redis_server.url)
    setup.edge.script = Script(behaviour="echo")
    service = setup.gateway.app[SESSIONS]
    assert service is not None
    poison = SessionRef("poisoned")
    await asyncio.to_thread(redis_server.stop)
    async with setup.client() as client:
        await ask(client, sid("a", "edge"), "a1")
        await ask(client, sid("b", "edge"), "b1")
        # As a turn that bypassed the repair at turn_of() would be: unencodable text.
        service.spool.push(
            PendingAppend(
                session=poison,
                request_id="p1",
                turns=({"role": "assistant", "content": "bad \ud800 text", "at": 1.0},),
            )
        )
        await ask(client, sid("a", "edge"), "a2")
        await ask(client, sid("b", "edge"), "b2")
        await ask(client, sid("c", "edge"), "c1")
    await asyncio.to_thread(redis_server.start)
    for session in ("a", "b", "c"):
        await wait_for_turns(redis_server.url, session, 2 if session == "c" else 4)
    assert await redis_turns(redis_server.url, "a") == pairs(("a1", 1), ("a2", 3))
    assert await redis_turns(redis_server.url, "b") == pairs(("b1", 1), ("b2", 3))
    assert await redis_turns(redis_server.url, "c") == pairs(("c1", 1))
    assert await redis_turns(redis_server.url, "poisoned") == []
    after = await spool_written_out(setup.gateway)
    assert after.value("gateway_session_spool_poisoned_total") == 1
    assert after.value("gateway_session_spool_dropped_turns_total") == 1
    assert after.value("gateway_session_replayed_turns_total") == 10  # each exactly once
    assert after.value("gateway_session_spool_turns") == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"session spool: set aside request p1 of session {poison.log_id} (1 turns) after an "
        "unexpected UnicodeEncodeError"
    ]
    assert "poisoned" not in caplog.text and "bad" not in caplog.text
    # The replayer is alive: another outage is ridden out the same way.
    await asyncio.to_thread(redis_server.stop)
    async with setup.client() as client:
        raw = await ask(client, sid("d", "edge"), "d1")
        assert raw.headers[WARNING] == "store-unavailable"
    await asyncio.to_thread(redis_server.start)
    await wait_for_turns(redis_server.url, "d", 2)


async def test_a_node_reply_with_a_lone_surrogate_is_stored_repaired(
    redis_server, make_sessions
) -> None:
    """With Redis up, and spooled then replayed with Redis down: the turn is stored with
    U+FFFD where the surrogate was, and the stream ends with [DONE]."""
    setup = await make_sessions(redis_server.url)
    setup.edge.script = Script(chunks=("bad ", "\ud800", " text"))
    async with setup.client() as client:
        for session in ("up", "down"):
            if session == "down":
                await asyncio.to_thread(redis_server.stop)
            stream = await client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": "hi"}], stream=True,
                extra_headers=sid(session, "edge"),
            )  # fmt: skip
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == "bad \ufffd text"
            if session == "up":
                assert await redis_turns(redis_server.url, "up") == [
                    "user:hi", "assistant:bad \ufffd text",
                ]  # fmt: skip
    await asyncio.to_thread(redis_server.start)
    await wait_for_turns(redis_server.url, "down", 2)
    assert await redis_turns(redis_server.url, "down") == ["user:hi", "assistant:bad \ufffd text"]
    metrics = await scrape_metrics(setup.gateway)
    assert metrics.value("gateway_session_spool_poisoned_total") == 0


async def test_an_unexpected_error_in_the_replay_loop_is_logged_counted_and_survived(
    redis_server, caplog: pytest.LogCaptureFixture
) -> None:
    """Not an entry's fault (here: the policy snapshot cannot be read once): the replayer
    logs it with its traceback, counts it, pauses, and goes on."""
    spec = SessionsSpec(redis_timeout_s=0.5)
    fail_next = [False]

    def current_spec() -> SessionsSpec:
        if fail_next[0]:
            fail_next[0] = False
            raise RuntimeError("no policy snapshot")
        return spec

    metrics_ = GatewayMetrics()
    service = SessionService(
        store=SessionStore.from_url(redis_server.url), spec=current_spec, metrics=metrics_
    )
    replay = asyncio.create_task(service.run_replay())
    try:
        fail_next[0] = True
        turn = {"role": "user", "content": "q", "request_id": "r1", "at": 1.0}
        service._spool(PendingAppend(session=SessionRef("s"), request_id="r1", turns=(turn,)), spec)
        await wait_for_turns(redis_server.url, "s", 1)
        assert not replay.done()
        errors = metrics_.registry.get_sample_value(
            "gateway_session_store_errors_total", {"op": "replay"}
        )
        assert errors == 1
        record = next(r for r in caplog.records if "session replayer" in r.getMessage())
        assert record.levelno == logging.ERROR and record.exc_info is not None
    finally:
        replay.cancel()
        await asyncio.gather(replay, return_exceptions=True)
        await service.aclose()


async def test_a_turn_that_cannot_be_encoded_fails_alone_not_the_answer(
    redis_server, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis up, an append that fails unexpectedly costs its turns (counted, logged
    without the text), never the response that is being served."""
    policy = parse_policy(policy_yaml([("http://127.0.0.1:1", "m")], []))
    metrics_ = GatewayMetrics()
    service = SessionService(
        store=SessionStore.from_url(redis_server.url),
        spec=lambda: policy.sessions,
        metrics=metrics_,
    )
    try:
        conversation = await service.open(
            {"x-session-id": "odd"},
            {"model": "auto", "messages": [{"role": "user", "content": "secret question"}]},
            request_id="r1",
            policy=policy,
        )
        assert conversation is not None
        unencodable = {"role": "assistant", "content": "x", "tool_calls": [{"odd": {1, 2}}]}
        await conversation.record_reply(unencodable, "edge", None)  # does not raise
        assert metrics_.registry.get_sample_value("gateway_session_spool_dropped_turns_total") == 2
        assert await redis_turns(redis_server.url, "odd") == []
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
            f"session {SessionRef('odd').log_id}: turns not stored after an unexpected TypeError"
        ]
        assert "secret" not in caplog.text
    finally:
        await service.aclose()
