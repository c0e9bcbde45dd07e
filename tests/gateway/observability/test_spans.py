"""The span tree of a request: server span, classification, one GenAI span per attempt."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from tests.conftest import policy_yaml
from tests.gateway.observability.conftest import SIMPLE, Spans, attrs
from tests.helpers import sdk
from tests.scripted import Script, unused_port


async def _ask(gateway, *, stream: bool, messages=SIMPLE, **kw):
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=messages, stream=stream, **kw
        )
        if stream:
            text = "".join(
                [c.choices[0].delta.content or "" async for c in raw.parse() if c.choices]
            )
        else:
            text = raw.parse().choices[0].message.content
    return raw, text


@pytest.mark.parametrize("stream", [False, True])
async def test_routed_request_is_one_server_span_with_classify_and_one_attempt(
    two_tiers, spans: Spans, stream: bool
) -> None:
    edge, _, gateway = await two_tiers(tracing=spans.tracing)
    raw, text = await _ask(gateway, stream=stream, max_tokens=40)
    await spans.settled()

    assert text == "Hello from the upstream."
    server = spans.server()
    assert server.name == "POST /v1/chat/completions"
    assert server.parent is None  # no traceparent came in: a new trace starts here
    assert {s.name for s in spans.children(server)} == {"gateway.classify", "chat edge-model"}
    assert len(spans.all()) == 3

    s = attrs(server)
    assert s["http.request.method"] == "POST"
    assert s["http.route"] == "/v1/chat/completions"
    assert s["http.response.status_code"] == 200
    assert s["gateway.request_id"] == raw.headers["x-request-id"]
    assert s["gateway.tier"] == "edge" and s["gateway.node"] == "edge-1"
    assert s["gateway.route_tier"] == "edge"
    assert s["gateway.route_reason"] == raw.headers["x-gateway-route-reason"]
    assert s["gateway.route_reason_kind"] == "score"
    assert 0.0 <= s["gateway.complexity_score"] <= 0.55
    assert s["gateway.outcome"] == "ok"
    assert not any(key.startswith("gateway.fallback") for key in s)
    if stream:
        assert 0.0 < s["gateway.time_to_first_token_s"] < 5.0

    classify = attrs(spans.one("gateway.classify"))
    assert classify["gateway.tier"] == "edge"
    assert classify["gateway.complexity_score"] == s["gateway.complexity_score"]
    assert classify["gateway.route_reason"] == s["gateway.route_reason"]
    assert classify["gateway.classify.signals"] == ["1 tokens"]
    assert classify["gateway.classify.classifier"] == "heuristic"

    (attempt,) = spans.attempts()
    assert attempt.kind is SpanKind.CLIENT
    a = attrs(attempt)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "llama.cpp"
    assert a["gen_ai.request.model"] == "edge-model"
    assert a["gen_ai.response.model"] == "edge-model"
    assert a["gen_ai.request.max_tokens"] == 40
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["gen_ai.usage.input_tokens"] == 5  # the scripted upstream: 5 per message
    assert a["gen_ai.usage.output_tokens"] == 5
    assert a["server.address"] == "127.0.0.1"
    assert a["server.port"] == int(edge.url.rsplit(":", 1)[1])
    assert a["gateway.attempt"] == 1 and a["gateway.attempt.retry"] is False
    assert "error.type" not in a
    assert attempt.status.status_code is StatusCode.UNSET
    # The attempt lies inside the request, and the classification before the attempt.
    assert server.start_time <= attempt.start_time <= attempt.end_time <= server.end_time
    assert spans.one("gateway.classify").end_time <= attempt.start_time


@pytest.mark.parametrize("stream", [False, True])
async def test_fallback_has_two_attempt_spans_and_fallback_attributes(
    upstreams, make_gateway, spans: Spans, stream: bool
) -> None:
    cloud = await upstreams("cloud-model")
    dead = f"http://127.0.0.1:{unused_port()}"
    gateway = await make_gateway(
        policy_yaml([(dead, "edge-model")], [(cloud.url, "cloud-model")]),
        health_checks=False,
        tracing=spans.tracing,
    )
    raw, _ = await _ask(gateway, stream=stream)
    await spans.settled()

    assert raw.headers["x-gateway-fallback"] == "edge-1:connect_error"
    server = spans.server()
    first, second = spans.attempts()
    assert first.parent.span_id == second.parent.span_id == server.context.span_id
    assert first.name == "chat edge-model" and second.name == "chat cloud-model"
    f, s2 = attrs(first), attrs(second)
    assert f["error.type"] == "connect_error"
    assert first.status.status_code is StatusCode.ERROR
    assert "gen_ai.response.model" not in f
    assert s2["gen_ai.provider.name"] == "vllm"
    assert s2["gen_ai.response.model"] == "cloud-model"
    assert s2["gateway.attempt"] == 2
    assert "error.type" not in s2
    assert first.end_time <= second.start_time

    s = attrs(server)
    assert s["gateway.route_tier"] == "edge"
    assert s["gateway.tier"] == "cloud" and s["gateway.node"] == "cloud-1"
    assert s["gateway.fallback.from"] == "edge"
    assert s["gateway.fallback.to"] == "cloud"
    assert s["gateway.fallback.reason"] == "connect_error"
    assert s["gateway.fallback.failures"] == ["edge-1:connect_error"]
    assert server.status.status_code is StatusCode.UNSET  # the client got its answer


async def test_same_node_retry_is_a_second_attempt_span_not_a_fallback(
    two_tiers, spans: Spans
) -> None:
    edge, _, gateway = await two_tiers(
        fallback={"backoff_s": {"base": 0.01, "max": 0.02}}, tracing=spans.tracing
    )
    edge.queue = [Script(behaviour="status", status=500)]
    raw, _ = await _ask(gateway, stream=False)
    await spans.settled()

    assert raw.headers["x-gateway-node"] == "edge-1"
    first, second = spans.attempts()
    assert attrs(first)["error.type"] == "status_5xx"
    assert attrs(first)["http.response.status_code"] == 500
    assert attrs(second)["gateway.attempt.retry"] is True
    assert attrs(second)["gateway.node"] == "edge-1"
    s = attrs(spans.server())
    assert s["gateway.fallback.failures"] == ["edge-1:status_5xx"]
    assert "gateway.fallback.from" not in s  # answered by the node that failed: a retry


async def test_no_capacity_marks_the_server_span_failed(make_gateway, spans: Spans) -> None:
    dead_edge = f"http://127.0.0.1:{unused_port()}"
    dead_cloud = f"http://127.0.0.1:{unused_port()}"
    gateway = await make_gateway(
        policy_yaml([(dead_edge, "edge-model")], [(dead_cloud, "cloud-model")]),
        health_checks=False,
        tracing=spans.tracing,
    )
    async with sdk(gateway) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="auto", messages=SIMPLE)
    await spans.settled()

    assert caught.value.status_code == 503
    server = spans.server()
    s = attrs(server)
    assert s["http.response.status_code"] == 503
    assert s["error.type"] == "no_healthy_upstream"
    assert s["gateway.outcome"] == "error"
    assert s["gateway.fallback.failures"] == ["edge-1:connect_error", "cloud-1:connect_error"]
    assert "gateway.tier" not in s
    assert server.status.status_code is StatusCode.ERROR
    assert [attrs(a)["error.type"] for a in spans.attempts()] == ["connect_error"] * 2


async def test_rejected_request_names_its_error_code_without_marking_a_server_error(
    make_gateway, spans: Spans, upstreams
) -> None:
    edge = await upstreams("edge-model")
    gateway = await make_gateway(
        policy_yaml([(edge.url, "edge-model")], []), health_checks=False, tracing=spans.tracing
    )
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "no-such-model", "messages": SIMPLE},
        ) as response:
            assert response.status == 404
    await spans.settled()

    server = spans.server()
    s = attrs(server)
    assert s["http.response.status_code"] == 404
    assert s["gateway.error.code"] == "model_not_found"
    assert "error.type" not in s  # a client error is not the server's failure
    assert server.status.status_code is StatusCode.UNSET
    assert spans.attempts() == []
    assert edge.calls == 0


async def test_mid_stream_continuation_is_an_attempt_span_of_its_own(
    upstreams, make_gateway, spans: Spans
) -> None:
    edge1, edge2 = await upstreams("edge-model"), await upstreams("edge-model")
    edge1.script = Script(behaviour="cut", cut_after=2)
    # Make edge-1 the first choice; edge-2 continues.
    gateway = await make_gateway(
        policy_yaml([(edge1.url, "edge-model"), (edge2.url, "edge-model")], []),
        health_checks=False,
        tracing=spans.tracing,
    )
    from gateway.state import POOL

    gateway.app[POOL].nodes("edge")[1].load_score = 0.5
    raw, text = await _ask(gateway, stream=True)
    await spans.settled()

    assert raw.headers["x-gateway-node"] == "edge-1"  # headers were out before the cut
    broken, continued = spans.attempts()
    b, c = attrs(broken), attrs(continued)
    assert b["gateway.node"] == "edge-1" and b["error.type"] == "stream_cut"
    assert b["gateway.usage.estimated"] is True  # it broke before reporting usage
    assert b["gen_ai.usage.output_tokens"] == 2
    assert c["gateway.node"] == "edge-2"
    assert c["gateway.attempt.continuation"] is True
    assert c["gateway.continuation.form"] == "prompt"
    assert c["gateway.continuation.of"] == "edge-1"
    assert c["gen_ai.response.finish_reasons"] == ["stop"]
    s = attrs(spans.server())
    assert s["gateway.continuations"] == 1
    assert s["gateway.node"] == "edge-2"  # the node that finished the answer
    assert s["gateway.fallback.failures"] == ["edge-1:stream_cut"]
    assert s["gateway.fallback.reason"] == "stream_cut"
    assert text.startswith("Hello from")


async def test_client_leaving_mid_stream_ends_the_attempt_as_cancelled(
    upstreams, make_gateway, spans: Spans
) -> None:
    edge = await upstreams("edge-model")
    edge.script = Script(behaviour="stall", cut_after=1)
    gateway = await make_gateway(
        policy_yaml(
            [(edge.url, "edge-model")],
            [],
            timeouts="{connect: 1, first_token: 2, idle: 30, total: 60}",
        ),
        health_checks=False,
        tracing=spans.tracing,
    )
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "auto", "messages": SIMPLE, "stream": True},
        ) as response:
            await response.content.readline()  # the first event: the answer has started
    await spans.settled()

    (attempt,) = spans.attempts()
    assert attrs(attempt)["error.type"] == "cancelled"
    s = attrs(spans.server())
    assert s["gateway.outcome"] == "client_disconnected"
    assert s["gateway.client_disconnected"] is True


async def test_stream_that_breaks_for_good_marks_the_server_span_failed(
    upstreams, make_gateway, spans: Spans
) -> None:
    edge = await upstreams("edge-model")
    edge.script = Script(behaviour="cut", cut_after=2)
    policy = policy_yaml(
        [(edge.url, "edge-model")], [], fallback={"continuation": {"enabled": False}}
    )
    gateway = await make_gateway(policy, health_checks=False, tracing=spans.tracing)
    async with sdk(gateway) as client:
        stream = await client.chat.completions.create(model="auto", messages=SIMPLE, stream=True)
        with pytest.raises(openai.APIError):
            [c async for c in stream]
    await spans.settled()

    server = spans.server()
    s = attrs(server)
    assert s["http.response.status_code"] == 200  # the headers were out before the cut
    assert s["gateway.outcome"] == "stream_truncated"
    assert s["error.type"] == "stream_truncated"
    assert server.status.status_code is StatusCode.ERROR
    (attempt,) = spans.attempts()
    assert attrs(attempt)["error.type"] == "stream_cut"
