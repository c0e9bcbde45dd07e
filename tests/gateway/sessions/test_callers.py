"""Sessions belong to their caller: with GATEWAY_API_KEYS set, a key sees, continues and
deletes only the sessions created with it. And the key check itself: an Authorization
header that is not UTF-8 is a wrong key (401), not a traceback."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway.sessions.keys import SessionRef, owner_of_key, turns_key
from tests.gateway.sessions.conftest import ask, seen_messages, sid, texts
from tests.helpers import eventually_value
from tests.scripted import Script

pytestmark = pytest.mark.redis

KEY_A, KEY_B = "key-a-0123456789", "key-b-9876543210"


async def api(setup, method: str, session: str, key: str) -> tuple[int, dict | None]:
    async with aiohttp.ClientSession() as http:
        async with http.request(
            method,
            f"{setup.gateway.url}/v1/sessions/{session}",
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            body = await response.json() if response.status != 204 else None
            return response.status, body


async def test_another_key_can_neither_read_nor_continue_nor_delete_a_session(
    redis_server, make_sessions
) -> None:
    setup = await make_sessions(redis_server.url, api_keys=frozenset({KEY_A, KEY_B}))
    setup.edge.script = Script(behaviour="echo")
    async with setup.client(KEY_A) as alice:
        await ask(alice, sid("user-42", "edge"), "my secret is 1234")

    # Reading: the same 404 as for an id nobody uses (existence is not revealed).
    status, body = await api(setup, "GET", "user-42", KEY_B)
    assert status == 404
    _, free = await api(setup, "GET", "no-such-session", KEY_B)
    assert body is not None and free is not None
    assert body["error"]["code"] == free["error"]["code"] == "session_not_found"
    assert "1234" not in str(body)

    # Chatting: key B's "user-42" is B's own session; the node never sees A's turns.
    async with setup.client(KEY_B) as bob:
        raw = await ask(bob, sid("user-42", "edge"), "hello from b")
        assert raw.parse().choices[0].message.content == "[1] hello from b"
        assert texts(seen_messages(setup.edge)) == ["user:hello from b"]
        await ask(bob, sid("user-42", "edge"), "again")
        assert texts(seen_messages(setup.edge)) == [
            "user:hello from b", "assistant:[1] hello from b", "user:again",
        ]  # fmt: skip

    # Deleting: B deletes its own session only.
    assert (await api(setup, "DELETE", "user-42", KEY_B))[0] == 204
    assert (await api(setup, "DELETE", "user-42", KEY_B))[0] == 404
    status, body = await api(setup, "GET", "user-42", KEY_A)
    assert status == 200 and body is not None
    assert [t["content"] for t in body["turns"]] == ["my secret is 1234", "[1] my secret is 1234"]

    # A continues its own history.
    async with setup.client(KEY_A) as alice:
        await ask(alice, sid("user-42", "edge"), "and then?")
    assert texts(seen_messages(setup.edge))[:2] == [
        "user:my secret is 1234", "assistant:[1] my secret is 1234",
    ]  # fmt: skip

    # Redis names the owner by a hash of the key, never by the key.
    raw_redis = aioredis.Redis.from_url(redis_server.url)
    try:
        names = [name.decode() for name in await raw_redis.keys("*")]
        assert turns_key(SessionRef("user-42", owner_of_key(KEY_A))) in names
        assert not any(KEY_A in name or KEY_B in name for name in names)
        assert await raw_redis.exists(turns_key(SessionRef("user-42"))) == 0
    finally:
        await raw_redis.aclose()


async def test_a_caller_cannot_delete_another_callers_pending_turns(
    redis_server, make_sessions
) -> None:
    """The spool is per owner too: B's DELETE during an outage leaves A's turns queued."""
    setup = await make_sessions(redis_server.url, api_keys=frozenset({KEY_A, KEY_B}))
    await asyncio.to_thread(redis_server.stop)
    async with setup.client(KEY_A) as alice:
        await ask(alice, sid("shared-name", "edge"), "a's turn")
    status, _ = await api(setup, "DELETE", "shared-name", KEY_B)
    assert status == 503  # Redis is down; B's own (empty) session could not be checked
    await asyncio.to_thread(redis_server.start)
    await eventually_value(
        lambda: api(setup, "GET", "shared-name", KEY_A),
        lambda answer: answer[0] == 200,
        15,
        "A's turns replayed",
    )
    assert (await api(setup, "GET", "shared-name", KEY_B))[0] == 404


@pytest.mark.parametrize(
    "token",
    [b"\xff\xfe", b"\xed\xa0\x80", b"caf\xe9", b"key-a-0123456789\xff"],
    ids=["not-utf8", "surrogate-bytes", "latin1", "valid-key-plus-junk"],
)
async def test_an_undecodable_bearer_token_is_401_without_a_traceback(
    redis_server, make_sessions, caplog: pytest.LogCaptureFixture, token: bytes
) -> None:
    setup = await make_sessions(redis_server.url, api_keys=frozenset({KEY_A, KEY_B}))
    reader, writer = await asyncio.open_connection("127.0.0.1", setup.gateway.server.port)
    try:
        writer.write(
            b"GET /v1/sessions/user-42 HTTP/1.1\r\nHost: gw\r\n"
            b"Authorization: Bearer " + token + b"\r\nConnection: close\r\n\r\n"
        )
        async with asyncio.timeout(10):
            answer = await reader.read()  # to the end: Connection: close
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 "), head
    assert b"application/json" in head
    assert b'"code": "invalid_api_key"' in body and b'"type": "authentication_error"' in body
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    # A good key still passes.
    status, _ = await api(setup, "GET", "user-42", KEY_A)
    assert status == 404
