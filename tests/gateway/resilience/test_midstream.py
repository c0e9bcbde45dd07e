"""A stream that breaks after the client saw part of the answer: continued on another node
in the same response, or ended with an in-stream error. Never a truncated success."""

from __future__ import annotations

import time

import openai
import pytest

from gateway.state import FORWARDER
from gateway.upstream.continuation import CONTINUE_PROMPT
from tests.gateway.resilience.conftest import SIMPLE, TEXT, policy, raw_stream
from tests.helpers import sdk
from tests.scripted import Script, unused_port

REST = (" the", " upstream", ".")  # what a continuation of "Hello from" adds


async def edge_and_cloud(two_tiers, *, edge: Script, cloud: Script, **kw):
    e, c, gateway = await two_tiers(**kw)
    e.script, c.script = edge, cloud
    return e, c, gateway


async def test_a_cut_stream_is_finished_by_the_cloud_with_a_prefill_in_one_stream(
    two_tiers,
) -> None:
    edge, cloud, gateway = await edge_and_cloud(
        two_tiers,
        edge=Script(behaviour="cut", cut_after=2, role_chunk=True),
        cloud=Script(chunks=REST, role_chunk=True),
    )
    out = await raw_stream(
        gateway,
        {"messages": SIMPLE, "max_tokens": 50, "stream_options": {"include_usage": True}},
    )
    assert out.text == TEXT
    assert out.done and out.finish_reasons == ["stop"] and out.errors == []
    # One answer: one id and one role chunk throughout; each chunk names its writer.
    assert {c["id"] for c in out.chunks} == {"chatcmpl-scripted"}
    assert len({c["created"] for c in out.chunks}) == 1
    roles = [c for c in out.chunks if c["choices"] and "role" in c["choices"][0]["delta"]]
    assert len(roles) == 1
    writers = [c["model"] for c in out.chunks if c["choices"] and c["choices"][0]["delta"]]
    assert writers == ["edge-model"] * 3 + ["cloud-model"] * 3
    # The usage adds both attempts: the cut one estimated (prompt "hi" = 1 + 4 template
    # tokens; 2 chunks), the continuation as the cloud reported it.
    usage = out.chunks[-1]["usage"]
    cloud_usage = {"prompt_tokens": 10, "completion_tokens": 3}  # scripted: 5/message, 1/chunk
    assert usage == {
        "prompt_tokens": 5 + cloud_usage["prompt_tokens"],
        "completion_tokens": 2 + cloud_usage["completion_tokens"],
        "total_tokens": 20,
    }
    assert (edge.calls, cloud.calls) == (1, 1)
    asked = cloud.seen[0].body
    assert asked["messages"] == [*SIMPLE, {"role": "assistant", "content": "Hello from"}]
    assert asked["continue_final_message"] is True
    assert asked["add_generation_prompt"] is False
    assert asked["max_tokens"] == 48  # what is left of the client's 50
    assert asked["model"] == "cloud-model"


async def test_the_sdk_reads_a_continued_stream_as_one_normal_answer(two_tiers) -> None:
    _, _, gateway = await edge_and_cloud(
        two_tiers,
        edge=Script(behaviour="cut", cut_after=3),
        cloud=Script(chunks=(" upstream", ".")),
    )
    async with sdk(gateway) as client:
        stream = await client.chat.completions.create(
            model="auto", messages=SIMPLE, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3 + 2
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


async def test_a_rejected_prefill_is_asked_again_in_words_and_remembered(two_tiers) -> None:
    _edge, cloud, gateway = await edge_and_cloud(
        two_tiers,
        edge=Script(behaviour="cut", cut_after=2),
        cloud=Script(chunks=REST, reject_prefill=True),
    )
    out = await raw_stream(gateway, {"messages": SIMPLE})
    assert out.text == TEXT and out.done and out.errors == []  # the 400 never surfaced
    assert cloud.calls == 2
    first, second = (s.body for s in cloud.seen)
    assert first.get("continue_final_message") is True
    assert "continue_final_message" not in second
    assert second["messages"] == [
        *SIMPLE,
        {"role": "assistant", "content": "Hello from"},
        {"role": "user", "content": CONTINUE_PROMPT},
    ]
    # The next continuation on that node goes straight to the form it accepts.
    out = await raw_stream(gateway, {"messages": SIMPLE})
    assert out.text == TEXT and out.done
    assert cloud.calls == 3 and "continue_final_message" not in cloud.seen[2].body


async def test_a_node_of_the_same_tier_continues_first_and_its_repetition_is_trimmed(
    upstreams, make_gateway
) -> None:
    broken, spare, cloud = (
        await upstreams("edge-model"),
        await upstreams("edge-model"),
        await upstreams("cloud-model"),
    )
    broken.script = Script(behaviour="cut", cut_after=2)
    # Small models asked to continue often start over: the repeated start is dropped.
    spare.script = Script(chunks=("Hello", " from", " the", " upstream", "."))
    gateway = await make_gateway(
        policy(
            [(broken.url, "edge-model"), (spare.url, "edge-model")], [(cloud.url, "cloud-model")]
        ),
        health_checks=False,
    )
    out = await raw_stream(gateway, {"messages": SIMPLE})
    assert out.text == TEXT and out.done
    assert (broken.calls, spare.calls, cloud.calls) == (1, 1, 0)
    # The edge tier is not in prefill_tiers (llama.cpp): it is asked in words.
    assert spare.seen[0].body["messages"][-1] == {"role": "user", "content": CONTINUE_PROMPT}


async def test_a_continuation_that_says_something_else_is_relayed_whole(two_tiers) -> None:
    _, _, gateway = await edge_and_cloud(
        two_tiers,
        edge=Script(behaviour="cut", cut_after=2),
        cloud=Script(chunks=("Hel", "ium", " rises."), reject_prefill=True),
    )
    out = await raw_stream(gateway, {"messages": SIMPLE})
    # "Hel" looked like a repeat of "Hello from" until "ium": then all of it is released.
    assert out.text == "Hello fromHelium rises."
    assert out.done


async def test_a_stalled_stream_is_continued_after_the_idle_deadline(two_tiers) -> None:
    edge, cloud, gateway = await edge_and_cloud(
        two_tiers,
        edge=Script(behaviour="stall", cut_after=2),
        cloud=Script(chunks=REST),
        timeouts="{connect: 1, first_token: 2, idle: 0.5, total: 10}",
    )
    started = time.monotonic()
    out = await raw_stream(gateway, {"messages": SIMPLE})
    assert 0.5 <= time.monotonic() - started < 2.5
    assert out.text == TEXT and out.done
    stalled = edge.seen[0]
    assert stalled.disconnected_at is not None  # the gateway hung up on it
    assert stalled.disconnected_at <= cloud.seen[0].at + 0.2


async def test_an_upstream_error_event_is_continued_not_forwarded(two_tiers) -> None:
    _, cloud, gateway = await edge_and_cloud(
        two_tiers,
        edge=Script(behaviour="error_event", cut_after=2),
        cloud=Script(chunks=REST),
    )
    out = await raw_stream(gateway, {"messages": SIMPLE})
    assert out.text == TEXT and out.done and out.errors == []
    assert cloud.calls == 1


async def test_a_malformed_event_is_not_trusted_and_the_gateway_stays_healthy(two_tiers) -> None:
    edge, cloud, gateway = await edge_and_cloud(
        two_tiers,
        edge=Script(behaviour="malformed"),  # a garbled event after "Hello"
        cloud=Script(chunks=(" from", " the", " upstream", ".")),
    )
    out = await raw_stream(gateway, {"messages": SIMPLE})
    # The garbled event might have carried text: the answer resumes after the last good one.
    assert out.text == TEXT and out.done
    assert cloud.seen[0].body["messages"][-1] == {"role": "assistant", "content": "Hello"}
    edge.script = Script()
    out = await raw_stream(gateway, {"messages": SIMPLE})  # next request: business as usual
    assert out.text == TEXT and out.done and out.headers["x-gateway-node"] == "edge-1"


async def test_a_malformed_event_without_a_continuation_is_a_clean_error(
    upstreams, make_gateway
) -> None:
    edge = await upstreams("edge-model")
    edge.script = Script(behaviour="malformed")
    gateway = await make_gateway(
        policy([(edge.url, "edge-model")], [(f"http://127.0.0.1:{unused_port()}", "c")]),
        health_checks=False,
    )
    out = await raw_stream(gateway, {"messages": SIMPLE})
    assert out.text == "Hello"
    assert out.errors[0]["code"] == "upstream_stream_truncated"
    assert not out.done and out.finish_reasons == []


@pytest.mark.parametrize(
    ("fallback", "cloud_up", "why"),
    [
        ({"continuation": {"enabled": False}}, True, "disabled by the policy"),
        ({}, False, "no node could continue it"),
    ],
)
async def test_without_a_continuation_the_stream_ends_in_an_error_event(
    upstreams, make_gateway, fallback, cloud_up, why
) -> None:
    edge, cloud = await upstreams("edge-model"), await upstreams("cloud-model")
    edge.script = Script(behaviour="cut", cut_after=2)
    cloud_url = cloud.url if cloud_up else f"http://127.0.0.1:{unused_port()}"
    gateway = await make_gateway(
        policy([(edge.url, "edge-model")], [(cloud_url, "cloud-model")], fallback=fallback),
        health_checks=False,
    )
    out = await raw_stream(gateway, {"messages": SIMPLE})
    assert out.text == "Hello from"
    assert len(out.errors) == 1
    assert out.errors[0]["code"] == "upstream_stream_truncated"
    assert why in out.errors[0]["message"]
    assert not out.done and out.finish_reasons == []  # nothing says "complete"
    assert cloud.calls == 0
    # The official client raises instead of returning a short answer.
    async with sdk(gateway) as client:
        stream = await client.chat.completions.create(model="auto", messages=SIMPLE, stream=True)
        with pytest.raises(openai.APIError, match="broke off"):
            async for _ in stream:
                pass


async def test_continuations_are_bounded(upstreams, make_gateway) -> None:
    e1, e2, cloud = (
        await upstreams("edge-model"),
        await upstreams("edge-model"),
        await upstreams("cloud-model"),
    )
    for upstream in (e1, e2, cloud):
        upstream.script = Script(behaviour="cut", cut_after=1)
    gateway = await make_gateway(
        policy(
            [(e1.url, "edge-model"), (e2.url, "edge-model")],
            [(cloud.url, "cloud-model")],
            fallback={"continuation": {"max": 1}},
        ),
        health_checks=False,
    )
    out = await raw_stream(gateway, {"messages": SIMPLE})
    assert out.text == "Hello"  # e2 repeated "Hello" (trimmed), then broke too
    assert out.errors and "already continued 1 times" in out.errors[0]["message"]
    assert (e1.calls, e2.calls, cloud.calls) == (1, 1, 0)


async def test_a_non_streaming_answer_cut_mid_way_is_completed(two_tiers) -> None:
    edge, cloud, gateway = await edge_and_cloud(
        two_tiers,
        edge=Script(behaviour="cut", cut_after=2, role_chunk=True),
        cloud=Script(chunks=REST, role_chunk=True),
    )
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=SIMPLE)
    completion = raw.parse()
    assert completion.choices[0].message.content == TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.id == "chatcmpl-scripted"
    assert completion.model == "cloud-model"  # the model that finished the answer
    assert completion.usage.completion_tokens == 2 + 3
    assert raw.headers["x-gateway-node"] == "cloud-1"
    assert raw.headers["x-gateway-fallback"] == "edge-1:stream_cut"
    assert edge.seen[0].body["stream"] is True  # fetched as a stream internally
    assert (edge.calls, cloud.calls) == (1, 1)


async def test_a_non_streaming_answer_that_cannot_be_completed_is_a_502(
    upstreams, make_gateway
) -> None:
    edge = await upstreams("edge-model")
    edge.script = Script(behaviour="cut", cut_after=2)
    gateway = await make_gateway(
        policy([(edge.url, "edge-model")], [(f"http://127.0.0.1:{unused_port()}", "c")]),
        health_checks=False,
    )
    async with sdk(gateway) as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="auto", messages=SIMPLE)
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_stream_truncated"


async def test_a_continuation_too_long_for_the_window_is_not_taken_for_a_prefill_refusal(
    two_tiers,
) -> None:
    _edge, cloud, gateway = await edge_and_cloud(
        two_tiers,
        edge=Script(behaviour="cut", cut_after=2),
        cloud=Script(behaviour="status", status=400, error_code="context_length_exceeded"),
    )
    out = await raw_stream(gateway, {"messages": SIMPLE})
    assert out.text == "Hello from"
    assert out.errors[0]["code"] == "upstream_stream_truncated"  # not the cloud's 400
    assert not out.done
    assert cloud.calls == 1  # asking again in words would not fit either
    assert gateway.app[FORWARDER].prefill_rejected == set()
