"""W3C trace context: continued from the client, handed to every upstream attempt."""

from __future__ import annotations

import pytest

from tests.conftest import policy_yaml
from tests.gateway.observability.conftest import SIMPLE, Spans, attrs, span_hex, trace_hex
from tests.helpers import sdk
from tests.scripted import Script, unused_port

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


def _parse(traceparent: str) -> tuple[str, str, str]:
    version, trace_id, parent_id, flags = traceparent.split("-")
    assert version == "00"
    return trace_id, parent_id, flags


@pytest.mark.parametrize("stream", [False, True])
async def test_each_attempt_hands_its_own_span_to_the_node_as_traceparent(
    upstreams, make_gateway, spans: Spans, stream: bool
) -> None:
    cloud = await upstreams("cloud-model")
    dead = f"http://127.0.0.1:{unused_port()}"
    gateway = await make_gateway(
        policy_yaml([(dead, "edge-model")], [(cloud.url, "cloud-model")]),
        health_checks=False,
        tracing=spans.tracing,
    )
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=SIMPLE, stream=stream
        )
        if stream:
            [c async for c in raw.parse()]
    await spans.settled()

    server = spans.server()
    _, cloud_attempt = spans.attempts()
    trace_id, parent_id, flags = _parse(cloud.seen[0].headers["traceparent"])
    assert trace_id == trace_hex(server)
    assert parent_id == span_hex(cloud_attempt)  # the node's spans hang under the attempt
    assert int(flags, 16) & 1  # sampled
    assert "traceparent" not in attrs(cloud_attempt)  # headers are never span attributes


async def test_incoming_traceparent_is_continued(upstreams, make_gateway, spans: Spans) -> None:
    edge = await upstreams("edge-model")
    gateway = await make_gateway(
        policy_yaml([(edge.url, "edge-model")], []), health_checks=False, tracing=spans.tracing
    )
    async with sdk(gateway) as client:
        await client.chat.completions.create(
            model="auto",
            messages=SIMPLE,
            extra_headers={"traceparent": TRACEPARENT, "tracestate": "vendor=abc"},
        )
    await spans.settled()

    server = spans.server()
    assert trace_hex(server) == CLIENT_TRACE
    assert server.parent is not None and format(server.parent.span_id, "016x") == CLIENT_SPAN
    assert server.parent.is_remote
    assert all(trace_hex(s) == CLIENT_TRACE for s in spans.all())
    trace_id, parent_id, _ = _parse(edge.seen[0].headers["traceparent"])
    assert trace_id == CLIENT_TRACE
    assert parent_id == span_hex(spans.attempts()[0])
    assert edge.seen[0].headers["tracestate"] == "vendor=abc"


async def test_retries_get_a_new_span_each_and_the_node_sees_each_one(
    upstreams, make_gateway, spans: Spans
) -> None:
    edge = await upstreams("edge-model")
    edge.queue = [Script(behaviour="status", status=502)]
    policy = policy_yaml(
        [(edge.url, "edge-model")], [], fallback={"backoff_s": {"base": 0.01, "max": 0.02}}
    )
    gateway = await make_gateway(policy, health_checks=False, tracing=spans.tracing)
    async with sdk(gateway) as client:
        await client.chat.completions.create(model="auto", messages=SIMPLE)
    await spans.settled()

    parents = [_parse(seen.headers["traceparent"])[1] for seen in edge.seen]
    assert parents == [span_hex(a) for a in spans.attempts()]
    assert len(set(parents)) == 2


async def test_malformed_traceparent_starts_a_new_trace(
    upstreams, make_gateway, spans: Spans
) -> None:
    edge = await upstreams("edge-model")
    gateway = await make_gateway(
        policy_yaml([(edge.url, "edge-model")], []), health_checks=False, tracing=spans.tracing
    )
    async with sdk(gateway) as client:
        completion = await client.chat.completions.create(
            model="auto", messages=SIMPLE, extra_headers={"traceparent": "00-zz-not-a-trace"}
        )
    await spans.settled()

    assert completion.choices[0].message.content == "Hello from the upstream."
    server = spans.server()
    assert server.parent is None
    assert _parse(edge.seen[0].headers["traceparent"])[0] == trace_hex(server)


async def test_with_tracing_off_the_callers_trace_headers_pass_through(
    upstreams, make_gateway
) -> None:
    edge = await upstreams("edge-model")
    gateway = await make_gateway(policy_yaml([(edge.url, "edge-model")], []), health_checks=False)
    async with sdk(gateway) as client:
        await client.chat.completions.create(
            model="auto", messages=SIMPLE, extra_headers={"traceparent": TRACEPARENT}
        )
        await client.chat.completions.create(model="auto", messages=SIMPLE)

    # A gateway without tracing is invisible in the trace: the node continues the client's.
    assert edge.seen[0].headers["traceparent"] == TRACEPARENT
    assert "traceparent" not in edge.seen[1].headers  # none came in, none is made up
