"""Routing decides on what will be sent: a 12-turn session against a real Redis, with the
official SDK as the client and scripted upstreams that record what they were sent.

Long turns push the stored conversation far past the ``long-prompt`` threshold; the short
turns after them still go back to the edge, because what the edge would be sent (the
conversation fitted into its window) is small. The route reason says so at each turn.
"""

from __future__ import annotations

import aiohttp
import pytest

from gateway.tokens import count_tokens
from tests.gateway.sessions.conftest import ask, seen_messages, sid, texts
from tests.scripted import Script

pytestmark = pytest.mark.redis

RULES = [
    {"when": {"prompt_tokens_over": 1000}, "tier": "cloud", "reason": "long-prompt"},
    {
        "when": {"history_tokens_over": 4000, "header": {"x-app-plan": "pro"}},
        "tier": "cloud",
        "reason": "long-chat-pro",
    },
]
EDGE_REPLY = "You're welcome."
CLOUD_REPLY = "Summary: " + "the fox and the dog meet by the river. " * 35


def document(name: str) -> str:
    return f"Please summarize document {name}. " + (
        "The quick brown fox jumps over the lazy dog near the river bank. " * 80
    )


def judged(dropped: int) -> str:
    return f" (judged as fitted for edge: {dropped} older turns left out)"


# (message, extra headers, tier, reason: exact or "score..." + suffix, context dropped)
TURNS: list[tuple[str, dict[str, str], str, tuple[str, str], int]] = [
    ("hello", {}, "edge", ("score ", ""), 0),
    (document("A"), {}, "cloud", ("rule long-prompt", ""), 0),
    ("thanks!", {}, "edge", ("score ", judged(4)), 4),
    ("ok", {}, "edge", ("score ", judged(4)), 4),
    # The newest turn is long by itself: as fitted for the edge it is still > 1000 tokens.
    (document("B"), {}, "cloud", ("rule long-prompt", judged(4)), 0),
    ("thanks!", {}, "edge", ("score ", judged(10)), 10),
    ("Could you say that again, shorter?", {}, "edge", ("score ", judged(10)), 10),
    (document("C"), {}, "cloud", ("rule long-prompt", judged(10)), 0),
    ("ok", {}, "edge", ("score ", judged(16)), 16),
    # The whole conversation's size is a signal an operator can route on.
    ("one more question", {"x-app-plan": "pro"}, "cloud", ("rule long-chat-pro", judged(16)), 0),
    ("thanks! bye", {}, "edge", ("score ", judged(16)), 16),
    ("bye", {"x-app-plan": "pro"}, "cloud", ("rule long-chat-pro", judged(16)), 0),
]


async def test_simple_turns_go_back_to_the_edge_once_the_fitted_prompt_is_small(
    redis_server, make_sessions
) -> None:
    setup = await make_sessions(redis_server.url, routing={"rules": RULES})
    setup.edge.script = Script(chunks=(EDGE_REPLY,))
    setup.cloud.script = Script(chunks=(CLOUD_REPLY,))
    got: list[tuple[str, str, int]] = []
    async with setup.client() as client:
        for number, (text, extra, tier, (start, end), dropped) in enumerate(TURNS, 1):
            raw = await ask(client, sid("twelve", **extra), text)
            reason = raw.headers["x-gateway-route-reason"]
            sent = int(raw.headers["x-gateway-context-dropped"])
            got.append((raw.headers["x-gateway-tier"], reason, sent))
            where = f"turn {number} ({text[:20]!r}): {got[-1]}"
            assert raw.headers["x-gateway-tier"] == tier, where
            assert reason.startswith(start) and reason.endswith(end), where
            if start != "score ":
                assert reason == start + end, where
            else:
                assert reason.startswith("score 0.") and "<= 0.55" in reason, where
            assert sent == dropped, where
            assert "x-gateway-warning" not in raw.headers, where
    assert [tier for tier, _, _ in got] == [turn[2] for turn in TURNS]
    # What was judged is what the edge was sent: after a long turn, only the newest turn.
    edge_calls = [s.body for s in setup.edge.seen]
    assert len(edge_calls) == 7
    assert texts(edge_calls[1]["messages"]) == ["user:thanks!"]
    assert texts(edge_calls[2]["messages"]) == [
        "user:thanks!", f"assistant:{EDGE_REPLY}", "user:ok",
    ]  # fmt: skip
    assert all(call["max_tokens"] == 512 for call in edge_calls)  # the default answer budget
    # The cloud got the whole conversation every time (its window holds it), ...
    cloud_sent = seen_messages(setup.cloud)
    assert len(cloud_sent) == 2 * 11 + 1
    assert sum(count_tokens(str(m["content"])) for m in cloud_sent) > 4000  # past the history rule
    # ... and the store kept every turn: fitting shapes what one request sends.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{setup.gateway.url}/v1/sessions/twelve") as response:
            assert len((await response.json())["turns"]) == 2 * 12


async def test_without_the_fix_history_would_be_the_prompt(redis_server, make_sessions) -> None:
    """The same long history, judged whole, is long: a client that resends it without a
    session id owns its context, and routing sees all of it (the old behaviour)."""
    setup = await make_sessions(redis_server.url, routing={"rules": RULES})
    setup.edge.script = Script(chunks=(EDGE_REPLY,))
    setup.cloud.script = Script(chunks=(CLOUD_REPLY,))
    history = [
        {"role": "user", "content": document("A")},
        {"role": "assistant", "content": CLOUD_REPLY},
    ]
    async with setup.client() as client:
        raw = await ask(client, {}, *history, "thanks!")
        assert raw.headers["x-gateway-tier"] == "cloud"
        assert raw.headers["x-gateway-route-reason"] == "rule long-prompt"
        assert "x-gateway-context-dropped" not in raw.headers
        # With a session, the same conversation is fitted, and judged as fitted.
        await ask(client, sid("fitted"), *history[:1])
        raw = await ask(client, sid("fitted"), "thanks!")
        assert raw.headers["x-gateway-tier"] == "edge"
        assert raw.headers["x-gateway-route-reason"].endswith(judged(2))
        assert raw.headers["x-gateway-context-dropped"] == "2"
