"""What a streaming client gets of an answer: the node's events as they came, usage only
when asked for (always recorded), and the answer's record read by accounting and sessions."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.conftest import policy_yaml
from tests.helpers import scrape_metrics

SIMPLE = [{"role": "user", "content": "hi"}]


async def _raw_events(gateway, **body: object) -> list[bytes]:
    """The ``data`` payloads of a streamed answer, as bytes on the wire."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "auto", "messages": SIMPLE, "stream": True, **body},
        ) as response,
    ):
        assert response.status == 200
        raw = await response.read()
    return [line[len(b"data: ") :] for line in raw.split(b"\n\n") if line.startswith(b"data: ")]


@pytest.fixture
async def edge_only(upstreams, make_gateway):
    edge = await upstreams("edge-model")
    gateway = await make_gateway(policy_yaml([(edge.url, "edge-model")], []))
    return edge, gateway


async def test_events_pass_through_byte_for_byte(edge_only) -> None:
    _, gateway = edge_only
    events = await _raw_events(gateway, stream_options={"include_usage": True})
    # The scripted node writes json.dumps' default ", " separators; the gateway's own
    # encoding is compact. A re-encoded event would show.
    assert events[-1] == b"[DONE]"
    for event in events[:-1]:
        assert b'", "' in event, event
    assert [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:5]] == [
        "Hello",
        " from",
        " the",
        " upstream",
        ".",
    ]
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("on_finish", [False, True], ids=["usage-chunk", "usage-on-finish"])
async def test_usage_is_hidden_unless_asked_and_counted_either_way(edge_only, on_finish) -> None:
    edge, gateway = edge_only
    edge.script.usage_on_finish = on_finish
    events = await _raw_events(gateway)
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"  # the finish chunk stays
    assert edge.seen[-1].body["stream_options"] == {"include_usage": True}
    metrics = await scrape_metrics(gateway)
    assert metrics.value("gateway_tokens_total", tier="edge", direction="completion") == 5
    shown = [
        json.loads(e)
        for e in (await _raw_events(gateway, stream_options={"include_usage": True}))[:-1]
    ]
    assert shown[-1]["usage"]["completion_tokens"] == 5
    metrics = await scrape_metrics(gateway)
    assert metrics.value("gateway_tokens_total", tier="edge", direction="completion") == 10


@pytest.mark.parametrize("compact", [False, True], ids=["spaced-json", "compact-json"])
async def test_a_null_usage_on_every_chunk_is_not_passed_to_a_client_that_did_not_ask(
    edge_only, compact
) -> None:
    edge, gateway = edge_only
    edge.script.null_usage = True
    if compact:  # vLLM's and the edge node's encoding: the gateway cuts the bytes it got
        edge.script.compact_json = True
    chunks = [json.loads(e) for e in (await _raw_events(gateway))[:-1]]
    assert chunks and all("usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == (
        "Hello from the upstream."
    )
    shown = [
        json.loads(e)
        for e in (await _raw_events(gateway, stream_options={"include_usage": True}))[:-1]
    ]
    assert shown[0]["usage"] is None and shown[-1]["usage"]["completion_tokens"] == 5
