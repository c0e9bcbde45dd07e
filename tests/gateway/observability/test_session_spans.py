"""Session history in traces: load and append spans under the request span."""

from __future__ import annotations

import pytest

from tests.conftest import policy_yaml
from tests.gateway.observability.conftest import SIMPLE, Spans, attrs, span_hex
from tests.helpers import sdk

pytestmark = pytest.mark.redis

SESSIONS = {"ttl_s": 600, "redis_timeout_s": 0.3}


async def _gateway(upstreams, make_gateway, spans: Spans, redis_url: str):
    edge = await upstreams("edge-model")
    policy = policy_yaml([(edge.url, "edge-model")], [], sessions=SESSIONS)
    return edge, await make_gateway(
        policy, health_checks=False, tracing=spans.tracing, redis_url=redis_url
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_session_request_has_load_and_append_spans(
    upstreams, make_gateway, spans: Spans, redis_server, stream: bool
) -> None:
    edge, gateway = await _gateway(upstreams, make_gateway, spans, redis_server.url)
    headers = {"x-session-id": "chat-42"}
    async with sdk(gateway) as client:
        for _ in range(2):
            response = await client.chat.completions.create(
                model="auto", messages=SIMPLE, stream=stream, extra_headers=headers
            )
            if stream:
                [c async for c in response]
            await spans.settled()
            if _ == 0:
                first = {s.name: attrs(s) for s in spans.all()}
                spans.clear()

    # The first request: a new session, nothing stored yet, two turns written.
    assert first["gateway.session.load"] == {
        "gen_ai.conversation.id": "chat-42",
        "gateway.session.present": False,
        "gateway.session.turns": 0,
        "gateway.session.store": "ok",
    }
    assert first["gateway.session.append"]["gateway.session.turns"] == 2
    assert first["gateway.session.append"]["gateway.session.store"] == "ok"
    assert first["chat edge-model"]["gen_ai.conversation.id"] == "chat-42"

    # The second: the stored pair comes back, and the tree is server -> load, classify,
    # attempt, append, in that order.
    server = spans.server()
    children = sorted(spans.children(server), key=lambda s: s.start_time or 0)
    assert [s.name for s in children] == [
        "gateway.session.load",
        "gateway.classify",
        "chat edge-model",
        "gateway.session.append",
    ]
    load = attrs(children[0])
    assert load["gateway.session.present"] is True
    assert load["gateway.session.turns"] == 2
    assert attrs(children[3])["gateway.session.store"] == "ok"
    assert len(edge.seen[-1].body["messages"]) == 3  # the stored pair + the new message
    assert edge.seen[-1].headers["traceparent"].split("-")[2] == span_hex(children[2])


async def test_store_outage_shows_on_the_session_spans(
    upstreams, make_gateway, spans: Spans, redis_server
) -> None:
    edge, gateway = await _gateway(upstreams, make_gateway, spans, redis_server.url)
    redis_server.stop()
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=SIMPLE, extra_headers={"x-session-id": "chat-7"}
        )
    await spans.settled()

    assert raw.headers["x-gateway-session-warning"] == "store-unavailable"
    load = attrs(spans.one("gateway.session.load"))
    assert load["gateway.session.store"] == "unavailable"
    assert load["gateway.session.present"] is False
    append = attrs(spans.one("gateway.session.append"))
    assert append["gateway.session.store"] == "spooled"  # kept for the replayer
    assert spans.server().status.is_ok  # the client got its answer all the same
    assert edge.calls == 1


async def test_request_without_session_has_no_session_spans(
    upstreams, make_gateway, spans: Spans, redis_server
) -> None:
    _, gateway = await _gateway(upstreams, make_gateway, spans, redis_server.url)
    async with sdk(gateway) as client:
        await client.chat.completions.create(model="auto", messages=SIMPLE)
    await spans.settled()

    assert sorted(spans.names()) == [
        "POST /v1/chat/completions",
        "chat edge-model",
        "gateway.classify",
    ]
