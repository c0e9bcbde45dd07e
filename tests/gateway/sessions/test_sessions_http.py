"""Sessions end to end: the real gateway, a real redis-server, scripted upstreams, and the
official openai SDK as the client (the session id travels in ``extra_headers``)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis

from gateway.sessions.keys import SessionRef, turns_key
from gateway.tokens import count_tokens
from tests.gateway.sessions.conftest import ask, seen_messages, sid, texts
from tests.helpers import scrape_metrics
from tests.scripted import Script

pytestmark = pytest.mark.redis


async def stored(setup, session: str) -> list[str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{setup.gateway.url}/v1/sessions/{session}") as response:
            if response.status == 404:
                return []
            assert response.status == 200
            body = await response.json()
    return [f"{t['role']}:{t['content']}" for t in body["turns"]]


async def test_history_is_put_in_front_of_each_new_message(redis_server, make_sessions) -> None:
    setup = await make_sessions(redis_server.url)
    setup.edge.script = Script(behaviour="echo")
    async with setup.client() as client:
        for text in ("one", "two", "three"):
            raw = await ask(client, sid("s1", "edge"), text)
            assert raw.headers["x-gateway-context-dropped"] == "0"
            assert "x-gateway-session-warning" not in raw.headers
    assert [len(s.body["messages"]) for s in setup.edge.seen] == [1, 3, 5]
    assert texts(seen_messages(setup.edge)) == [
        "user:one", "assistant:[1] one", "user:two", "assistant:[3] two", "user:three",
    ]  # fmt: skip
    assert await stored(setup, "s1") == [
        "user:one", "assistant:[1] one", "user:two", "assistant:[3] two",
        "user:three", "assistant:[5] three",
    ]  # fmt: skip
    # Without a session id nothing is added or stored.
    async with setup.client() as client:
        raw = await ask(client, {"x-gateway-tier": "edge"}, "alone")
    assert raw.parse().choices[0].message.content == "[1] alone"
    assert "x-gateway-context-dropped" not in raw.headers


async def test_a_conversation_moves_between_tiers_with_its_history(
    redis_server, make_sessions
) -> None:
    setup = await make_sessions(redis_server.url)
    setup.edge.script = Script(behaviour="echo")
    setup.cloud.script = Script(behaviour="echo")
    async with setup.client() as client:
        for tier, text in (("edge", "e1"), ("cloud", "c2"), ("edge", "e3"), ("cloud", "c4")):
            raw = await ask(client, sid("hop", tier), text)
            assert raw.headers["x-gateway-tier"] == tier
    assert [len(s.body["messages"]) for s in setup.edge.seen] == [1, 5]
    assert [len(s.body["messages"]) for s in setup.cloud.seen] == [3, 7]
    assert texts(seen_messages(setup.cloud)) == [
        "user:e1", "assistant:[1] e1", "user:c2", "assistant:[3] c2",
        "user:e3", "assistant:[5] e3", "user:c4",
    ]  # fmt: skip
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{setup.gateway.url}/v1/sessions/hop") as response:
            body = await response.json()
    replies = [t for t in body["turns"] if t["role"] == "assistant"]
    assert [(t["tier"], t["model"]) for t in replies] == [
        ("edge", "edge-model"), ("cloud", "cloud-model"),
        ("edge", "edge-model"), ("cloud", "cloud-model"),
    ]  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
async def test_history_survives_a_fallback_to_the_other_tier(
    redis_server, make_sessions, stream
) -> None:
    setup = await make_sessions(redis_server.url)
    setup.edge.script = Script(behaviour="echo")
    setup.cloud.script = Script(behaviour="echo")
    async with setup.client() as client:
        await ask(client, sid("fb"), "first")  # routed: a short message goes to the edge
        setup.edge.queue.append(Script(behaviour="status", status=503))
        raw = await ask(client, sid("fb"), "second", stream=stream)
        if stream:
            text = "".join(
                [c.choices[0].delta.content or "" async for c in raw.parse() if c.choices]
            )
        else:
            text = raw.parse().choices[0].message.content
        assert raw.headers["x-gateway-tier"] == "cloud"
        assert raw.headers["x-gateway-fallback"] == "edge-1:overloaded"
        assert text == "[3] second"
        await ask(client, sid("fb"), "third")
    assert texts(seen_messages(setup.edge)) == [
        "user:first", "assistant:[1] first", "user:second", "assistant:[3] second", "user:third",
    ]  # fmt: skip
    assert len(await stored(setup, "fb")) == 6


async def test_streamed_replies_are_assembled_and_stored(redis_server, make_sessions) -> None:
    setup = await make_sessions(redis_server.url)
    setup.edge.script = Script(chunks=("Stre", "amed ", "answer", "."))
    async with setup.client() as client:
        stream = await client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_headers=sid("st", "edge"),
        )  # fmt: skip
        chunks = [chunk async for chunk in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "Streamed answer."
        )
        await ask(client, sid("st", "edge"), "next")
    assert await stored(setup, "st") == [
        "user:hi", "assistant:Streamed answer.", "user:next", "assistant:Streamed answer.",
    ]  # fmt: skip
    assert texts(seen_messages(setup.edge)) == [
        "user:hi",
        "assistant:Streamed answer.",
        "user:next",
    ]


async def test_a_broken_stream_stores_nothing(redis_server, make_sessions) -> None:
    setup = await make_sessions(redis_server.url)
    # Both tiers break, so not even a mid-stream continuation can finish the answer.
    setup.edge.script = Script(behaviour="cut", cut_after=2)
    setup.cloud.script = Script(behaviour="cut", cut_after=0)
    async with setup.client() as client:
        stream = await client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_headers=sid("broken", "edge"),
        )  # fmt: skip
        with pytest.raises(openai.APIError):
            _ = [chunk async for chunk in stream]
    assert await stored(setup, "broken") == []


async def test_client_sent_history_is_not_doubled(redis_server, make_sessions) -> None:
    """A session-unaware client resends everything; the gateway stores each turn once."""
    setup = await make_sessions(redis_server.url)
    setup.edge.script = Script(behaviour="echo")
    system = {"role": "system", "content": "You are terse."}
    history: list[dict[str, str]] = []
    async with setup.client() as client:
        for text in ("one", "two", "three"):
            history.append({"role": "user", "content": text})
            raw = await ask(client, sid("full", "edge"), system, *history)
            history.append({"role": "assistant", "content": raw.parse().choices[0].message.content})
            # The upstream saw exactly what the client sent: nothing put in front twice.
            assert seen_messages(setup.edge) == [system, *history[:-1]]
    assert await stored(setup, "full") == [f"{m['role']}:{m['content']}" for m in history]
    # The system prompt is per request: never stored.
    assert not any(t.startswith("system:") for t in await stored(setup, "full"))


async def test_a_regenerated_turn_replaces_the_stored_history(redis_server, make_sessions) -> None:
    setup = await make_sessions(redis_server.url)
    setup.edge.script = Script(behaviour="echo")
    async with setup.client() as client:
        await ask(client, sid("regen", "edge"), "one")
        await ask(client, sid("regen", "edge"), "two")
        # The user edits "two": the client sends its own (diverged) history.
        await ask(
            client, sid("regen", "edge"), "one", {"role": "assistant", "content": "[1] one"}, "TWO"
        )
    assert texts(seen_messages(setup.edge)) == ["user:one", "assistant:[1] one", "user:TWO"]
    assert await stored(setup, "regen") == [
        "user:one", "assistant:[1] one", "user:TWO", "assistant:[3] TWO",
    ]  # fmt: skip


async def test_a_retry_with_the_same_request_id_is_stored_once(redis_server, make_sessions) -> None:
    setup = await make_sessions(redis_server.url)
    setup.edge.script = Script(behaviour="echo")
    async with setup.client() as client:
        await ask(client, sid("retry", "edge"), "one")
        retry = sid("retry", "edge", **{"x-request-id": "req-two"})
        first = await ask(client, retry, "two")
        second = await ask(client, retry, "two")
    assert first.headers["x-request-id"] == second.headers["x-request-id"] == "req-two"
    # The retry saw what the first attempt saw, not its own earlier turns.
    assert seen_messages(setup.edge, -1) == seen_messages(setup.edge, -2)
    assert await stored(setup, "retry") == [
        "user:one", "assistant:[1] one", "user:two", "assistant:[3] two",
    ]  # fmt: skip


async def test_a_reused_request_id_with_other_content_is_stored(
    redis_server, make_sessions
) -> None:
    """Not a retry: a client (or a proxy) that sends every turn with the same x-request-id.
    Each turn is stored, and each sees the ones before it."""
    setup = await make_sessions(redis_server.url)
    setup.edge.script = Script(behaviour="echo")
    same = sid("reuse", "edge", **{"x-request-id": "fixed-id"})
    async with setup.client() as client:
        await ask(client, same, "one")
        await ask(client, same, "two")
        await ask(client, same, "two")  # a retry of the second: stored once
        await ask(client, same, "three")
    assert texts(seen_messages(setup.edge, 1)) == ["user:one", "assistant:[1] one", "user:two"]
    assert seen_messages(setup.edge, 2) == seen_messages(setup.edge, 1)
    assert len(seen_messages(setup.edge, 3)) == 5
    assert await stored(setup, "reuse") == [
        "user:one", "assistant:[1] one", "user:two", "assistant:[3] two",
        "user:three", "assistant:[5] three",
    ]  # fmt: skip


SLOW_REDIS_LUA = """
local now = redis.call('TIME')
local stop = tonumber(now[1]) * 1000000 + tonumber(now[2]) + tonumber(ARGV[1]) * 1000
repeat now = redis.call('TIME') until tonumber(now[1]) * 1000000 + tonumber(now[2]) >= stop
return 1
"""
"""Keeps Redis busy for ARGV[1] ms: every other call waits behind it (a slow Redis)."""


async def test_sdk_streams_with_a_session_are_served_and_counted_ok(
    redis_server, make_sessions, caplog: pytest.LogCaptureFixture
) -> None:
    """The openai SDK hangs up soon after it reads [DONE] (it drains the body for 0.1 s at
    most). The turn used to be appended after [DONE]: with Redis a little slow, the
    client was gone before the response ended, and the answer was logged and counted as a
    failure. Now each is counted ok, with its tokens, its turn stored once, no error logged."""
    setup = await make_sessions(redis_server.url)
    setup.edge.script = Script(behaviour="echo", chunk_delay_s=0.05)
    count = 20
    raw_redis = aioredis.Redis.from_url(redis_server.url)
    try:
        async with setup.client() as client:
            for i in range(count):
                stream = await client.chat.completions.create(
                    model="auto", messages=[{"role": "user", "content": f"q{i}"}], stream=True,
                    extra_headers=sid("sdk", "edge"),
                )  # fmt: skip
                chunks = aiter(stream)
                first = await anext(chunks)
                # Redis slows down while the answer ends, so the append takes ~0.15 s.
                slow = asyncio.create_task(raw_redis.eval(SLOW_REDIS_LUA, 0, 250))
                rest = [chunk async for chunk in chunks]
                await slow
                chunks_read = [first, *rest]
                text = "".join(c.choices[0].delta.content or "" for c in chunks_read if c.choices)
                assert text == f"[{2 * i + 1}] q{i}"  # each turn saw all the ones before it
    finally:
        await raw_redis.aclose()
    turns = await stored(setup, "sdk")
    assert turns == [
        line for i in range(count) for line in (f"user:q{i}", f"assistant:[{2 * i + 1}] q{i}")
    ]
    metrics = await scrape_metrics(setup.gateway)
    outcomes = {s.labels["outcome"]: s.value for s in metrics.samples("gateway_requests_total")}
    assert outcomes == {"ok": count}
    # The echo answer is 2 chunks; the prompt grows by 2 messages per turn (5 tokens each).
    assert metrics.value("gateway_tokens_total", tier="edge", direction="completion") == 2 * count
    statuses = {
        s.labels["status"]
        for s in metrics.samples("gateway_http_responses_total", route="/v1/chat/completions")
    }
    assert "500" not in statuses
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_concurrent_requests_on_one_session_lose_and_mix_nothing(
    redis_server, make_sessions
) -> None:
    setup = await make_sessions(redis_server.url)
    setup.edge.script = Script(behaviour="echo", first_token_delay_s=0.05)
    count = 12
    async with setup.client() as client:
        await asyncio.gather(*(ask(client, sid("busy", "edge"), f"m{i}") for i in range(count)))
    turns = await stored(setup, "busy")
    assert len(turns) == 2 * count
    users = turns[0::2]
    replies = turns[1::2]
    assert sorted(users) == sorted(f"user:m{i}" for i in range(count))
    for user, reply in zip(users, replies, strict=True):
        # Each reply directly follows the message it answers.
        assert reply.startswith("assistant:[") and reply.endswith("] " + user.removeprefix("user:"))


async def test_trimming_to_the_edge_window_drops_oldest_turns(redis_server, make_sessions) -> None:
    setup = await make_sessions(redis_server.url, tiers={"edge": {"context_window": 512}})
    setup.edge.script = Script(chunks=("answer " * 40,))
    setup.cloud.script = Script(chunks=("answer " * 40,))
    system = {"role": "system", "content": "You are terse."}
    max_tokens = 64
    async with setup.client() as client:
        for i in range(8):
            raw = await ask(
                client, sid("long", "edge"), system, f"question {i} " + "word " * 40,
                max_tokens=max_tokens,
            )  # fmt: skip
        dropped = int(raw.headers["x-gateway-context-dropped"])
        assert dropped > 0
        sent = seen_messages(setup.edge)
        assert sent[0] == system
        assert sent[1]["role"] == "user"
        assert sent[-1]["content"].startswith("question 7 ")
        assert len(sent) == 1 + 15 - dropped  # system + 7 stored pairs + the new message
        budget = int(512 * 0.9) - max_tokens - 3
        assert sum(count_tokens(m["content"]) + 4 for m in sent) <= budget
        # The same conversation on the cloud's larger window keeps everything.
        raw = await ask(client, sid("long", "cloud"), system, "on the cloud", max_tokens=max_tokens)
        assert raw.headers["x-gateway-context-dropped"] == "0"
        assert len(seen_messages(setup.cloud)) == 1 + 16 + 1
        # A fallback gets a body fitted for the tier that is tried: the edge (512) was sent
        # a trimmed conversation, the cloud (8192) the whole of it.
        setup.edge.queue.append(Script(behaviour="status", status=503))
        raw = await ask(client, sid("long"), system, "fall back", max_tokens=max_tokens)
        assert raw.headers["x-gateway-tier"] == "cloud"
        assert raw.headers["x-gateway-context-dropped"] == "0"
        assert len(seen_messages(setup.edge)) < len(seen_messages(setup.cloud)) == 1 + 18 + 1
    # Trimming is per request: the store keeps everything (up to max_turns).
    assert len(await stored(setup, "long")) == 2 * 10


async def test_max_turns_caps_the_stored_history(redis_server, make_sessions) -> None:
    setup = await make_sessions(redis_server.url, sessions={"max_turns": 4})
    setup.edge.script = Script(behaviour="echo")
    async with setup.client() as client:
        for text in ("one", "two", "three"):
            await ask(client, sid("cap", "edge"), text)
    assert await stored(setup, "cap") == [
        "user:two", "assistant:[3] two", "user:three", "assistant:[5] three",
    ]  # fmt: skip


async def test_ttl_is_refreshed_on_every_turn(redis_server, make_sessions) -> None:
    setup = await make_sessions(redis_server.url, sessions={"ttl_s": 600})
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        async with setup.client() as client:
            await ask(client, sid("ttl", "edge"), "one")
            assert 590 <= await raw.ttl(turns_key(SessionRef("ttl"))) <= 600
            await raw.expire(turns_key(SessionRef("ttl")), 30)
            await ask(client, sid("ttl", "edge"), "two")
            assert await raw.ttl(turns_key(SessionRef("ttl"))) > 500
    finally:
        await raw.aclose()


async def test_session_api_reads_and_erases(redis_server, make_sessions) -> None:
    setup = await make_sessions(redis_server.url)
    async with setup.client() as client:
        raw = await ask(client, sid("api", "edge"), "hello")
    request_id = raw.headers["x-request-id"]
    base = f"{setup.gateway.url}/v1/sessions"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api") as response:
            assert response.status == 200
            body = await response.json()
        assert body["id"] == "api" and body["object"] == "session"
        assert 0 < body["ttl"] <= 600
        user, reply = body["turns"]
        assert user["role"] == "user" and user["content"] == "hello"
        assert user["request_id"] == reply["request_id"] == request_id
        assert reply == {
            "role": "assistant",
            "content": "Hello from the upstream.",
            "request_id": request_id,
            "tier": "edge",
            "model": "edge-model",
            "at": reply["at"],
        }
        assert isinstance(reply["at"], float) and reply["at"] > 1.7e9
        async with http.delete(f"{base}/api") as response:
            assert response.status == 204
        for method in ("GET", "DELETE"):
            async with http.request(method, f"{base}/api") as response:
                assert response.status == 404
                assert (await response.json())["error"]["code"] == "session_not_found"
    raw_redis = aioredis.Redis.from_url(redis_server.url)
    try:
        # No turn and no marker left: only the tombstone (the generation, see test_store).
        assert await raw_redis.keys("gw:{api}*") == [b"gw:{api}:gen"]
    finally:
        await raw_redis.aclose()


@pytest.mark.parametrize(
    "bad", ["has space", "x" * 129, "brace{x}", "slash/x", "ünïcode", "semi;colon"]
)
async def test_bad_session_ids_are_400(redis_server, make_sessions, bad) -> None:
    setup = await make_sessions(redis_server.url)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{setup.gateway.url}/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-session-id": bad.encode("utf-8").decode("latin-1")},
        ) as response:
            assert response.status == 400
            error = (await response.json())["error"]
    assert error["param"] == "x-session-id"
    assert error["type"] == "invalid_request_error"
    assert setup.edge.calls == 0


async def test_bad_session_ids_in_the_api_path_are_400(redis_server, make_sessions) -> None:
    setup = await make_sessions(redis_server.url)
    async with aiohttp.ClientSession() as http:
        for bad in ("has%20space", "x" * 129, "a%7Bb%7D"):
            async with http.get(f"{setup.gateway.url}/v1/sessions/{bad}") as response:
                assert response.status == 400, bad
                assert (await response.json())["error"]["param"] == "session_id"


async def test_an_empty_session_header_is_400_with_the_sdk(redis_server, make_sessions) -> None:
    setup = await make_sessions(redis_server.url)
    async with setup.client() as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await ask(client, {"x-session-id": ""}, "hi")
    assert caught.value.body["param"] == "x-session-id"


async def test_session_id_from_the_user_field(redis_server, make_sessions) -> None:
    setup = await make_sessions(redis_server.url, sessions={"id_from_user": True})
    setup.edge.script = Script(behaviour="echo")
    async with setup.client() as client:
        await ask(client, {"x-gateway-tier": "edge"}, "one", user="alice")
        await ask(client, {"x-gateway-tier": "edge"}, "two", user="alice")
        assert len(seen_messages(setup.edge)) == 3
        # The header wins over the user field.
        await ask(client, sid("other", "edge"), "three", user="alice")
        assert len(seen_messages(setup.edge)) == 1
        with pytest.raises(openai.BadRequestError) as caught:
            await ask(client, {}, "hi", user="not a valid id")
    assert caught.value.body["param"] == "user"
    assert len(await stored(setup, "alice")) == 4


async def test_the_user_field_is_ignored_unless_the_policy_says_so(
    redis_server, make_sessions
) -> None:
    setup = await make_sessions(redis_server.url)
    async with setup.client() as client:
        raw = await ask(client, {"x-gateway-tier": "edge"}, "hi", user="not a valid id either")
    assert raw.parse().choices[0].message.content == "Hello from the upstream."
    assert await stored(setup, "alice") == []


async def test_without_redis_url_sessions_are_disabled(make_sessions) -> None:
    setup = await make_sessions(None)
    setup.edge.script = Script(behaviour="echo")
    async with setup.client() as client:
        for text in ("one", "two"):
            raw = await ask(client, sid("nope", "edge"), text)
            assert raw.headers["x-gateway-session-warning"] == "sessions-disabled"
            assert raw.parse().choices[0].message.content == f"[1] {text}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{setup.gateway.url}/v1/sessions/nope") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "sessions_disabled"


async def test_session_api_is_behind_the_api_key(redis_server, make_sessions) -> None:
    setup = await make_sessions(redis_server.url, api_keys=frozenset({"sekrit"}))
    url = f"{setup.gateway.url}/v1/sessions/any"
    async with aiohttp.ClientSession() as http:
        for method in ("GET", "DELETE"):
            async with http.request(method, url) as response:
                assert response.status == 401
            async with http.request(
                method, url, headers={"Authorization": "Bearer sekrit"}
            ) as response:
                assert response.status == 404  # through the gate; just no such session


async def test_session_metrics_are_exported(redis_server, make_sessions) -> None:
    setup = await make_sessions(redis_server.url, tiers={"edge": {"context_window": 256}})
    setup.edge.script = Script(chunks=("answer " * 40,))
    async with setup.client() as client:
        for i in range(4):
            await ask(client, sid("m", "edge"), f"q{i} " + "word " * 40, max_tokens=32)
    metrics = await scrape_metrics(setup.gateway)
    assert metrics.value("gateway_session_context_dropped_turns_total", tier="edge") > 0
    assert metrics.value("gateway_session_store_seconds_count", op="append") == 4
    assert metrics.value("gateway_session_store_seconds_count", op="load") == 4
    assert metrics.value("gateway_session_spool_turns") == 0


async def test_an_answer_continued_on_the_other_tier_is_stored_whole(
    redis_server, make_sessions
) -> None:
    """The edge breaks mid-stream and the cloud finishes the answer: the stored reply is
    exactly what the client read, credited to the tier that finished it."""
    setup = await make_sessions(redis_server.url)
    setup.edge.queue.append(Script(behaviour="cut", cut_after=2))
    setup.cloud.script = Script(chunks=(" the", " cloud."))
    async with setup.client() as client:
        stream = await client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_headers=sid("cont", "edge"),
        )  # fmt: skip
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text.startswith("Hello from")
        await ask(client, sid("cont", "edge"), "next")
    assert await stored(setup, "cont") == [
        "user:hi", f"assistant:{text}", "user:next", "assistant:Hello from the upstream.",
    ]  # fmt: skip
    assert texts(seen_messages(setup.edge)) == ["user:hi", f"assistant:{text}", "user:next"]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{setup.gateway.url}/v1/sessions/cont") as response:
            first_reply = (await response.json())["turns"][1]
    assert text == "Hello from the cloud."
    assert (first_reply["tier"], first_reply["model"]) == ("cloud", "cloud-model")
    assert setup.cloud.calls == 1


async def test_an_odd_cap_never_starts_the_history_with_an_answer(
    redis_server, make_sessions
) -> None:
    setup = await make_sessions(redis_server.url, sessions={"max_turns": 3})
    setup.edge.script = Script(behaviour="echo")
    async with setup.client() as client:
        for text in ("one", "two", "three"):
            await ask(client, sid("odd", "edge"), text)
    # Stored: the last 3 turns, the first of which is an answer whose question is gone.
    assert await stored(setup, "odd") == ["assistant:[3] two", "user:three", "assistant:[3] three"]
    assert texts(seen_messages(setup.edge)) == ["user:two", "assistant:[3] two", "user:three"]
