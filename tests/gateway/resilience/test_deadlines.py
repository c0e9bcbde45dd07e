"""Per-phase deadlines: connect, first token, idle between chunks, total. A node that
timed out is not asked again by the same request; the request fails over instead."""

from __future__ import annotations

import time

import aiohttp
import openai
import pytest

from tests.gateway.resilience.conftest import SIMPLE, TEXT, policy, raw_stream
from tests.helpers import chat, eventually, sdk
from tests.scripted import Script


async def ask(gateway, *, stream: bool) -> tuple[str, dict[str, str], float]:
    started = time.monotonic()
    reply = await chat(gateway, stream=stream)
    return reply.text, dict(reply.headers), time.monotonic() - started


@pytest.mark.parametrize("stream", [False, True])
async def test_connect_deadline_fails_over(upstreams, make_gateway, blackhole, stream) -> None:
    cloud = await upstreams("cloud-model")
    gateway = await make_gateway(
        policy(
            [(blackhole, "edge-model")],
            [(cloud.url, "cloud-model")],
            timeouts="{connect: 0.5, first_token: 5, idle: 5, total: 20}",
        ),
        health_checks=False,
    )
    text, headers, elapsed = await ask(gateway, stream=stream)
    assert text == TEXT
    assert headers["x-gateway-fallback"] == "edge-1:timeout"
    assert 0.45 <= elapsed < 3.0  # the connect deadline, not the first-token one (5 s)
    assert cloud.calls == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_a_silent_node_is_dropped_at_the_first_token_deadline_and_not_retried(
    two_tiers, stream
) -> None:
    silent, cloud, gateway = await two_tiers(
        timeouts="{connect: 1, first_token: 0.5, idle: 5, total: 20}"
    )
    silent.script = Script(behaviour="hang")  # accepts the request, never answers
    text, headers, elapsed = await ask(gateway, stream=stream)
    assert text == TEXT
    assert headers["x-gateway-fallback"] == "edge-1:timeout"
    # Non-streaming requests too end the silent attempt at the first-token deadline
    # (they are fetched as streams), far from the 20 s total.
    assert 0.5 <= elapsed < 3.0
    assert (silent.calls, cloud.calls) == (1, 1)
    # The gateway hung up on the silent node when it gave up, before asking the cloud.
    hung_up = silent.seen[0].disconnected_at
    assert hung_up is not None
    assert 0.4 <= hung_up - silent.seen[0].at < 1.5
    assert hung_up <= cloud.seen[0].at + 0.2


async def test_a_role_chunk_alone_does_not_meet_the_first_token_deadline(two_tiers) -> None:
    mute, cloud, gateway = await two_tiers(
        timeouts="{connect: 1, first_token: 0.5, idle: 5, total: 20}"
    )
    mute.script = Script(behaviour="silent_stream")  # headers and a role chunk, then nothing
    cloud.script = Script(role_chunk=True)
    out = await raw_stream(gateway, {"messages": SIMPLE})
    # The client saw nothing of the mute node: one role chunk (the cloud's), one answer.
    assert out.headers["x-gateway-tier"] == "cloud"
    assert out.text == TEXT and out.done
    assert {c["model"] for c in out.chunks} == {"cloud-model"}
    roles = [c for c in out.chunks if c["choices"] and "role" in c["choices"][0]["delta"]]
    assert len(roles) == 1
    assert (mute.calls, cloud.calls) == (1, 1)
    assert mute.seen[0].disconnected_at is not None


async def test_a_slow_first_token_fails_over_to_the_other_tier(two_tiers) -> None:
    slow, cloud, gateway = await two_tiers(
        timeouts="{connect: 1, first_token: 0.5, idle: 5, total: 20}"
    )
    slow.script = Script(first_token_delay_s=2.0)
    text, headers, elapsed = await ask(gateway, stream=True)
    assert text == TEXT
    assert headers["x-gateway-tier"] == "cloud"
    assert elapsed < 1.8  # did not wait for the slow token
    assert (slow.calls, cloud.calls) == (1, 1)


async def test_total_deadline_ends_a_dripping_stream_with_an_error_not_a_success(two_tiers) -> None:
    drip, cloud, gateway = await two_tiers(
        timeouts="{connect: 1, first_token: 1, idle: 1, total: 1.5}"
    )
    drip.script = Script(chunks=("x",) * 200, chunk_delay_s=0.1)  # never idle, never done
    started = time.monotonic()
    out = await raw_stream(gateway, {"messages": SIMPLE})
    elapsed = time.monotonic() - started
    assert 1.4 <= elapsed < 3.0
    assert out.text and set(out.text) == {"x"}
    assert out.errors[0]["code"] == "upstream_timeout"
    assert not out.done and out.finish_reasons == []  # no success markers
    assert cloud.calls == 0  # no time was left to continue anywhere
    assert drip.seen[0].disconnected_at is not None


async def test_total_deadline_on_a_non_streaming_request_is_a_504(two_tiers) -> None:
    drip, _, gateway = await two_tiers(timeouts="{connect: 1, first_token: 1, idle: 1, total: 1.5}")
    drip.script = Script(chunks=("x",) * 200, chunk_delay_s=0.1)
    async with sdk(gateway) as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="auto", messages=SIMPLE)
    assert info.value.status_code == 504
    assert info.value.body["code"] == "upstream_timeout"
    # Closed at the deadline, not left dripping for the 20 s the upstream would go on.
    await eventually(lambda: drip.seen[0].disconnected_at is not None, 1.0, "the upstream closed")


async def test_direct_non_streaming_path_keeps_the_total_deadline(two_tiers) -> None:
    # stream_internally off: the old plain POST, bounded by the total deadline only.
    silent, cloud, gateway = await two_tiers(
        fallback={"stream_internally": False},
        timeouts="{connect: 1, first_token: 0.2, idle: 0.2, total: 1.5}",
    )
    silent.script = Script(behaviour="hang")
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + "/v1/chat/completions", json={"model": "auto", "messages": SIMPLE}
        ) as response,
    ):
        body = await response.json()
        assert response.status == 504  # the whole deadline was spent on the silent node
    assert body["error"]["code"] == "upstream_timeout"
    assert 1.4 <= time.monotonic() - started < 3.0
    assert "stream" not in silent.seen[0].body
    assert (silent.calls, cloud.calls) == (1, 0)


async def test_a_request_for_several_choices_is_not_fetched_as_a_stream(two_tiers) -> None:
    edge, cloud, gateway = await two_tiers()
    async with sdk(gateway) as client:
        await client.chat.completions.create(model="auto", messages=SIMPLE, n=2)
        await client.chat.completions.create(model="auto", messages=SIMPLE, n=1)
    # n=2 can't be rebuilt from text by a continuation: the plain call; n=1 streams.
    # (n > 1 goes to the cloud: the edge tier's default capabilities have one choice only.)
    assert "stream" not in cloud.seen[0].body and cloud.seen[0].body["n"] == 2
    assert edge.seen[0].body["stream"] is True
