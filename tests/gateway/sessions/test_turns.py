"""Stored turns (pure): text repaired where a message becomes a turn, the content digest
that tells a retry from another turn, and what the session API shows."""

from __future__ import annotations

import json

from gateway.sessions.turns import content_digest, encode, public, turn_of


def test_text_utf8_cannot_encode_is_repaired_in_the_turn_not_in_the_message() -> None:
    message = {
        "role": "assistant",
        "content": "a\ud800b",
        "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": '{"x": "\udfff"}'}}],
    }
    turn = turn_of(message, at=1.0, request_id="r", digest="d", tier="edge", model="m")
    assert turn["content"] == "a\ufffdb"
    assert turn["tool_calls"][0]["function"]["arguments"] == '{"x": "\ufffd"}'
    assert json.loads(encode(turn))["content"] == "a\ufffdb"  # encodable: storable
    assert message["content"] == "a\ud800b"  # the request's own message is left alone
    assert message["tool_calls"][0]["function"]["arguments"] == '{"x": "\udfff"}'


def test_content_parts_are_repaired_too() -> None:
    message = {"role": "user", "content": [{"type": "text", "text": "\udc80"}]}
    assert turn_of(message, at=1.0, request_id="r")["content"] == [
        {"type": "text", "text": "\ufffd"}
    ]


def test_the_digest_tells_a_retry_from_another_turn() -> None:
    one = [{"role": "system", "content": "s"}, {"role": "user", "content": "one"}]
    assert content_digest(one) == content_digest([dict(m) for m in one])
    assert content_digest(one) != content_digest([one[0], {"role": "user", "content": "two"}])
    assert len(content_digest(one)) == 16
    assert content_digest([{"role": "user", "content": "\ud800"}])  # never raises


def test_the_session_api_does_not_show_the_digest() -> None:
    turn = turn_of({"role": "user", "content": "q"}, at=1.0, request_id="r", digest="d")
    assert turn["digest"] == "d"
    assert public(turn) == {"role": "user", "content": "q", "request_id": "r", "at": 1.0}
