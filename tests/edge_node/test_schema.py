"""Request validation: every bad body is a 400 naming its param; good bodies parse fully."""

from __future__ import annotations

import pytest

from edge_node.errors import InvalidRequest, ModelNotFound
from edge_node.schema import (
    DEFAULT_TEMPERATURE,
    ChatRequest,
    PromptMessage,
    check_model,
    parse_chat_request,
    parse_json,
)

ACCEPTED = frozenset({"smollm2-135m-instruct", "edge"})
USER = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def parse(**fields: object) -> ChatRequest:
    return parse_chat_request({"model": "edge", "messages": USER, **fields})


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"not json", b"[1, 2]", b'"text"', b"\xff\xfe", b"[" * 100_000],
    ids=["empty", "truncated", "text", "array", "string", "bad-utf8", "deep-nesting"],
)
def test_malformed_json_is_invalid_request(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_json(raw)
    assert info.value.status == 400
    assert info.value.body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "edge"])
def test_served_name_and_tier_alias_are_accepted(model: str) -> None:
    check_model({"model": model}, ACCEPTED, ("smollm2-135m-instruct",))


@pytest.mark.parametrize("model", ["gpt-4o", "auto", "cloud", "EDGE", "smollm2"])
def test_other_models_are_404(model: str) -> None:
    with pytest.raises(ModelNotFound) as info:
        check_model({"model": model}, ACCEPTED, ("smollm2-135m-instruct",))
    body = info.value.body()["error"]
    assert (info.value.status, body["code"], body["param"]) == (404, "model_not_found", "model")


@pytest.mark.parametrize("model", [None, "", 3])
def test_missing_model_is_400(model: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_model({"model": model}, ACCEPTED, ("edge",))
    assert info.value.param == "model"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0]",
        ),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"n": 2}, "n"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": []}, "stream_options"),
        ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stop": 7}, "stop"),
        ({"seed": -1}, "seed"),
        ({"ignore_eos": "true"}, "ignore_eos"),
        # Fields that would change the answer, which the node cannot honour: refused, not
        # dropped (an answer without them would pass for a faithful one).
        ({"tools": [TOOL]}, "tools"),
        ({"tools": [TOOL], "tool_choice": "auto"}, "tools"),
        ({"tools": [TOOL], "tool_choice": "required"}, "tools"),
        ({"tools": [TOOL], "tool_choice": NAMED}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"functions": [TOOL["function"]]}, "functions"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0]",
        ),
    ],
)
def test_bad_fields_name_their_param(fields: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(**fields)
    assert info.value.param == param
    assert info.value.status == 400


def test_full_request_parses() -> None:
    request = parse_chat_request(
        {
            "model": "edge",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": None, "tool_calls": []},
            ],
            "max_completion_tokens": 5,
            "max_tokens": 99,
            "stream": True,
            "stream_options": {"include_usage": True},
            "stop": "END",
            "temperature": 0,
            "top_p": 0.5,
            "seed": 7,
            # Accepted because they ask for nothing the node lacks: tools it may not call,
            # plain text, no logprobs; and fields that do not change an answer.
            "tools": [TOOL],
            "tool_choice": "none",
            "functions": [],
            "response_format": {"type": "text"},
            "logprobs": False,
            "top_logprobs": 0,
            "logit_bias": {},
            "parallel_tool_calls": True,
            "user": "u-1",
        }
    )
    assert request.messages == (
        PromptMessage(role="system", content="Be brief."),
        PromptMessage(role="user", content="a\nb"),
        PromptMessage(role="assistant", content=""),
    )
    assert request.max_tokens == 5  # max_completion_tokens wins, as in OpenAI's API
    assert request.stream and request.include_usage
    assert request.stop == ("END",)
    assert (request.sampling.temperature, request.sampling.top_p, request.sampling.seed) == (
        0.0,
        0.5,
        7,
    )


def test_defaults() -> None:
    request = parse()
    assert request.max_tokens is None
    assert not request.stream and not request.include_usage and not request.ignore_eos
    assert request.sampling.temperature == DEFAULT_TEMPERATURE
    assert request.stop == ()


def test_include_usage_only_applies_to_streams() -> None:
    assert not parse(stream_options={"include_usage": True}).include_usage
