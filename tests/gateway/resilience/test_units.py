"""Pure pieces of the fault handling: policy knobs, continuation bodies, the repeat guard,
chunk bookkeeping and the assembly of streamed chunks into a chat.completion."""

from __future__ import annotations

import json

import pytest

from gateway.policy.errors import PolicyError
from gateway.policy.parse import parse_policy
from gateway.upstream.answer_record import AttemptRecord
from gateway.upstream.chunks import has_output, parse_chunk
from gateway.upstream.continuation import CONTINUE_PROMPT, continuation_body
from gateway.upstream.repeat_guard import RepeatGuard
from tests.conftest import policy_yaml
from tests.helpers import assemble


def parse(fallback: str):
    text = policy_yaml([], []).replace("fallback:\n", "fallback:\n" + fallback, 1)
    return parse_policy(text, source="p.yaml")


def test_fallback_knobs_parse_with_defaults_and_values() -> None:
    spec = parse_policy(policy_yaml([], [])).fallback
    assert (spec.max_retry_wait_s, spec.same_node_retries, spec.rate_limited_retries) == (5, 1, 2)
    assert (spec.backoff_base_s, spec.backoff_max_s, spec.stream_internally) == (0.2, 2.0, True)
    assert spec.continuation.enabled and spec.continuation.prefill_tiers == {"cloud"}
    spec = parse(
        "  max_retry_wait_s: 1.5\n  same_node_retries: 0\n  rate_limited_retries: 3\n"
        "  backoff_s: {base: 0.05, max: 0.5}\n  stream_internally: false\n"
        "  continuation: {enabled: true, prefill_tiers: [edge, cloud], max: 1}\n"
    ).fallback
    assert (spec.max_retry_wait_s, spec.same_node_retries, spec.rate_limited_retries) == (1.5, 0, 3)
    assert (spec.backoff_base_s, spec.backoff_max_s, spec.stream_internally) == (0.05, 0.5, False)
    assert spec.continuation.prefill_tiers == {"edge", "cloud"}
    assert spec.continuation.max_continuations == 1


@pytest.mark.parametrize(
    ("fallback", "key"),
    [
        ("  max_retry_wait_s: -1\n", "fallback.max_retry_wait_s"),
        ("  backoff_s: {base: 1, max: 0.5}\n", "fallback.backoff_s.max"),
        ("  continuation: {prefill_tiers: [gpu]}\n", "fallback.continuation.prefill_tiers[0]"),
        ("  continuation: {enable: true}\n", "fallback.continuation.enable"),
        ("  same_node_retries: 9\n", "fallback.same_node_retries"),
    ],
)
def test_bad_fallback_knobs_name_the_key_and_line(fallback: str, key: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse(fallback)
    assert info.value.key == key
    assert info.value.line is not None


def test_continuation_bodies() -> None:
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 10,
        "temperature": 0.2,
    }
    prefill = continuation_body(body, "Hello", "prefill", tokens_used=3)
    assert prefill["messages"] == [*body["messages"], {"role": "assistant", "content": "Hello"}]
    assert prefill["continue_final_message"] is True  # type: ignore[typeddict-item]
    assert prefill["add_generation_prompt"] is False  # type: ignore[typeddict-item]
    assert prefill["max_tokens"] == 7 and prefill["temperature"] == 0.2
    prompt = continuation_body(body, "Hello", "prompt", tokens_used=30)
    assert prompt["messages"][-1] == {"role": "user", "content": CONTINUE_PROMPT}
    assert "continue_final_message" not in prompt
    assert prompt["max_tokens"] == 1  # never 0 or less: the node must still finish
    assert body["messages"] == [{"role": "user", "content": "hi"}]  # the original is untouched


def test_repeat_guard() -> None:
    guard = RepeatGuard("Hello from")
    assert guard.feed("Hel") is None  # could still be a repeat
    assert guard.feed("lo fr") is None
    assert guard.feed("om the") == " the"  # it was: only the new part is released
    guard = RepeatGuard("Hello from")
    assert guard.feed("Hel") is None
    assert guard.feed("p!") == "Help!"  # it was not: everything held is released


def test_attempt_record_and_first_token_detection() -> None:
    role = parse_chunk(b'{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}')
    text = parse_chunk(b'{"id":"a","model":"m","choices":[{"index":0,"delta":{"content":"Hi"}}]}')
    tool = parse_chunk(b'{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c"}]}}]}')
    done = parse_chunk(b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}')
    assert role is not None and text is not None and tool is not None and done is not None
    assert not has_output(role)
    assert has_output(text) and has_output(tool) and has_output(done)
    assert parse_chunk(b"{not json") is None and parse_chunk(b"[1]") is None
    state = AttemptRecord(tier="edge", node="e")
    for chunk in (role, text, done):
        state.observe(chunk)
    assert (state.response_id, state.model, state.finish_reason) == ("a", "m", "stop")
    assert state.output_chunks == 1 and not state.tool_calls
    state.observe(tool)
    assert state.tool_calls


def test_completion_builder_assembles_text_tool_calls_and_logprobs() -> None:
    events = [
        {"id": "x", "created": 7, "model": "m",
         "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": {"content": [1]}}]},
        {"choices": [{"index": 0, "delta": {"content": " there"}, "logprobs": {"content": [2]}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "id": "c1", "type": "function",
                             "function": {"name": "f", "arguments": '{"a":'}}
                        ]
                    },
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": " 1}"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]  # fmt: skip
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    body = assemble(events, usage=usage)
    assert body["id"] == "x" and body["created"] == 7 and body["model"] == "m"
    assert body["object"] == "chat.completion" and body["usage"] == usage
    (choice,) = body["choices"]  # type: ignore[misc]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["logprobs"] == {"content": [1, 2], "refusal": None}
    assert choice["message"] == {
        "role": "assistant",
        "content": "Hi there",
        "refusal": None,
        "annotations": [],
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
        ],
    }


def test_an_answer_with_several_choices_is_finished_only_when_all_are() -> None:
    state = AttemptRecord(tier="edge", node="e")
    for index in (0, 1):
        chunk = parse_chunk(
            json.dumps({"choices": [{"index": index, "delta": {"content": "x"}}]}).encode()
        )
        assert chunk is not None
        state.observe(chunk)
    first_done = parse_chunk(b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}')
    assert first_done is not None
    state.observe(first_done)
    assert not state.finished and state.other_choices  # choice 1 is still being written
    last_done = parse_chunk(b'{"choices":[{"index":1,"delta":{},"finish_reason":"length"}]}')
    assert last_done is not None
    state.observe(last_done)
    assert state.finished
