"""The SSE relay's bookkeeping, event by event."""

from __future__ import annotations

import json

from gateway.http.relay import DONE_EVENT, StreamRelay


def chunk(content: str | None = None, finish: str | None = None, **extra: object) -> bytes:
    delta = {} if content is None else {"content": content}
    body = {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return json.dumps(body).encode()


USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_events_pass_through_byte_for_byte() -> None:
    relay = StreamRelay(client_wants_usage=True)
    data = chunk("Hi")
    assert relay.process(data) == b"data: " + data + b"\n\n"
    assert relay.text == ["Hi"] and relay.model == "m"


def test_usage_only_chunk_is_hidden_unless_asked() -> None:
    usage_only = json.dumps({"id": "c", "choices": [], "usage": USAGE}).encode()
    hidden = StreamRelay(client_wants_usage=False)
    assert hidden.process(usage_only) is None
    assert hidden.usage == USAGE  # still recorded for accounting
    shown = StreamRelay(client_wants_usage=True)
    assert shown.process(usage_only) == b"data: " + usage_only + b"\n\n"


def test_usage_riding_on_a_content_chunk_is_stripped_unless_asked() -> None:
    relay = StreamRelay(client_wants_usage=False)
    out = relay.process(chunk("x", usage=USAGE))
    assert out is not None
    assert "usage" not in json.loads(out[len(b"data: ") :])
    assert relay.usage == USAGE


def test_finish_reason_and_done() -> None:
    relay = StreamRelay(client_wants_usage=False)
    relay.process(chunk("a"))
    assert not relay.complete
    relay.process(chunk(finish="length"))
    assert relay.complete and relay.finish_reason == "length" and not relay.done
    assert relay.process(b"[DONE]") == DONE_EVENT
    assert relay.done


def test_malformed_events_are_skipped_and_counted() -> None:
    relay = StreamRelay(client_wants_usage=False)
    assert relay.process(b"{not json") is None
    assert relay.process(b"[1, 2]") is None
    assert relay.malformed == 2
    assert relay.process(chunk("ok")) is not None
