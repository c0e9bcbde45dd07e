"""The default answer budget end to end: the real gateway, scripted upstreams that record the
``max_tokens`` they were sent, the official SDK, and (for sessions) a real redis-server."""

from __future__ import annotations

import pytest

from gateway.tokens import count_tokens
from tests.gateway.sessions.conftest import ask, seen_messages, sid, texts
from tests.scripted import Script

EDGE_DEFAULT = 200
CLOUD_DEFAULT = 512  # no default_max_tokens of its own: sessions.completion_reserve_tokens
USABLE_EDGE = int(2048 * 0.9)  # the test policy's edge window less the 10 % safety margin


EDGE_BUDGET = {"edge": {"default_max_tokens": EDGE_DEFAULT}}


def budget(upstream, index: int = -1) -> object:
    return upstream.seen[index].body.get("max_tokens", "unset")


async def answer_text(raw, stream: bool) -> str:
    if stream:
        return "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    return raw.parse().choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
async def test_each_tier_is_sent_its_default_max_tokens(make_sessions, stream) -> None:
    setup = await make_sessions(None, tiers=EDGE_BUDGET)
    async with setup.client() as client:
        raw = await ask(client, {}, "hi", stream=stream)  # routed: a short message, the edge
        assert await answer_text(raw, stream) == "Hello from the upstream."
        assert raw.headers["x-gateway-tier"] == "edge"
        assert budget(setup.edge) == EDGE_DEFAULT
        # A fallback is sent the other tier's default.
        setup.edge.queue.append(Script(behaviour="status", status=503))
        raw = await ask(client, {}, "hi", stream=stream)
        await answer_text(raw, stream)
        assert raw.headers["x-gateway-tier"] == "cloud"
        assert (budget(setup.edge), budget(setup.cloud)) == (EDGE_DEFAULT, CLOUD_DEFAULT)
        # The client's own budget is sent as it is, to every tier.
        setup.edge.queue.append(Script(behaviour="status", status=503))
        raw = await ask(client, {}, "hi", stream=stream, max_tokens=40)
        await answer_text(raw, stream)
        assert (budget(setup.edge), budget(setup.cloud)) == (40, 40)
        await ask(client, {"x-gateway-tier": "cloud"}, "hi", max_completion_tokens=30)
        assert budget(setup.cloud) == "unset"
        assert setup.cloud.seen[-1].body["max_completion_tokens"] == 30
        assert "x-gateway-warning" not in raw.headers


@pytest.mark.parametrize("stream", [False, True])
async def test_a_prompt_that_leaves_less_room_than_the_reserve_is_warned_about(
    make_sessions, stream
) -> None:
    setup = await make_sessions(None, tiers=EDGE_BUDGET)
    document = "Summarize this: " + "word " * 1700
    room = USABLE_EDGE - 3 - (count_tokens(document) + 4)
    assert 0 < room < EDGE_DEFAULT
    async with setup.client() as client:
        raw = await ask(client, {"x-gateway-tier": "edge"}, document, stream=stream)
        await answer_text(raw, stream)
    assert raw.headers["x-gateway-warning"] == (
        f"answer-budget-below-reserve; room={room}; reserve={EDGE_DEFAULT}"
    )
    # No default that does not fit is sent: the node answers in what is left.
    assert budget(setup.edge) == "unset"
    assert texts(seen_messages(setup.edge)) == [f"user:{document}"]


@pytest.mark.redis
async def test_a_session_turn_too_long_for_the_edge_window(redis_server, make_sessions) -> None:
    setup = await make_sessions(redis_server.url, tiers=EDGE_BUDGET)
    setup.edge.script = Script(behaviour="echo")
    document = "Summarize this: " + "word " * 1700
    room = USABLE_EDGE - 3 - (count_tokens(document) + 4)
    async with setup.client() as client:
        for text in ("one", "two"):
            raw = await ask(client, sid("big", "edge"), text)
            assert "x-gateway-warning" not in raw.headers
            assert budget(setup.edge) == EDGE_DEFAULT
        raw = await ask(client, sid("big", "edge"), document, stream=True)
        await answer_text(raw, True)
        # Everything before the newest turn was left out, and still the room is short.
        assert raw.headers["x-gateway-context-dropped"] == "4"
        assert raw.headers["x-gateway-warning"] == (
            f"answer-budget-below-reserve; room={room}; reserve={EDGE_DEFAULT}"
        )
        assert budget(setup.edge) == "unset"
        assert texts(seen_messages(setup.edge)) == [f"user:{document}"]
        # On the cloud's window the same conversation fits with its default reserved.
        raw = await ask(client, sid("big", "cloud"), "and briefly?")
        assert "x-gateway-warning" not in raw.headers
        assert raw.headers["x-gateway-context-dropped"] == "0"
        assert budget(setup.cloud) == CLOUD_DEFAULT
        assert len(seen_messages(setup.cloud)) == 7
