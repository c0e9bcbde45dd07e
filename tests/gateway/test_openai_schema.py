"""Real answers checked against OpenAI's published OpenAPI schema (``tests/schemas/``).

Strict clients are generated from that schema: a body that lacks a required field
(``refusal``, ``logprobs``, ...) breaks them even where the official SDK is lenient. Every
shape the gateway answers with is checked here: an answer fetched as a stream and
assembled, a stream chunk by chunk, an answer continued on another node after its stream
broke (both ways), the plain pass-through path (``stream_internally: false``, ``n: 2``),
the error for a request without ``model``, and the edge node's own answers.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path

import aiohttp
import pytest
from jsonschema import Draft202012Validator

from gateway.upstream.spec_fields import complete_spec_fields
from tests.conftest import RunningGateway, TwoTiersFactory
from tests.fixtures.edge import EdgeNodeProcess
from tests.gateway.resilience.conftest import SIMPLE, TEXT, raw_stream
from tests.helpers import assemble
from tests.scripted import Script

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "openai-chat-completions.json"
ANSWER = "CreateChatCompletionResponse"
CHUNK = "CreateChatCompletionStreamResponse"
ERROR = "ErrorResponse"


def _as_json_schema(node: object) -> object:
    """OpenAPI 3.0 schema objects as JSON Schema: ``nullable: true`` admits null (also in
    an ``enum``), and a ``$ref`` ignores its siblings (so ``nullable`` beside one wraps it)."""
    if isinstance(node, list):
        return [_as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _as_json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is not True:
        return out
    if "$ref" in out:
        return {"anyOf": [{"$ref": out["$ref"]}, {"type": "null"}]}
    if "enum" in out and None not in out["enum"]:
        out["enum"] = [*out["enum"], None]
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = [kind, "null"]
        return out
    return {"anyOf": [out, {"type": "null"}]}


@cache
def _document() -> dict[str, object]:
    document = _as_json_schema(json.loads(SCHEMA_PATH.read_text()))
    assert isinstance(document, dict)
    return document


@cache
def openai_validator(name: str) -> Draft202012Validator:
    """A validator for one of the document's component schemas (refs resolve inside it)."""
    root = {**_document(), "$ref": f"#/components/schemas/{name}"}
    Draft202012Validator.check_schema(root)
    return Draft202012Validator(root)


def assert_valid(name: str, body: object) -> None:
    problems = [
        f"{'.'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}"
        for e in openai_validator(name).iter_errors(body)
    ]
    assert not problems, f"not a valid {name}: {problems}\n{json.dumps(body)[:2000]}"


def _invalid(name: str, body: object) -> bool:
    return not openai_validator(name).is_valid(body)


# -- the validator itself can fail ------------------------------------------------------

OPENAI_EXAMPLE = {  # the example of OpenAI's own schema document, trimmed
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "A wooden boardwalk.",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163},
}


def test_the_validator_accepts_openais_example_and_rejects_what_strict_clients_reject() -> None:
    assert_valid(ANSWER, OPENAI_EXAMPLE)
    for path, change in [
        (("choices", 0, "message"), lambda m: m.pop("refusal")),
        (("choices", 0), lambda c: c.pop("logprobs")),
        (("choices", 0), lambda c: c.update(finish_reason=None)),  # null only in chunks
        ((), lambda b: b.update(model=None)),
        ((), lambda b: b.update(object="chat.completion.chunk")),
    ]:
        body = copy.deepcopy(OPENAI_EXAMPLE)
        target: object = body
        for step in path:
            target = target[step]  # type: ignore[index]
        change(target)
        assert _invalid(ANSWER, body), (path, body)
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}],
        "usage": None,  # nullable beside a $ref: translated, else this would fail
    }
    assert_valid(CHUNK, chunk)
    assert _invalid(CHUNK, {**chunk, "choices": [{"index": 0, "delta": {}}]})  # no finish
    assert _invalid(CHUNK, {**chunk, "usage": {"prompt_tokens": 1}})


def test_an_assembled_answer_with_tool_calls_and_logprobs_is_spec_complete() -> None:
    token = {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}
    events = [
        {"id": "x", "created": 7, "model": "m",
         "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": {"content": [token]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "c1", "type": "function",
             "function": {"name": "f", "arguments": '{"a":'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": " 1}"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]  # fmt: skip
    body = assemble(events)  # type: ignore[arg-type]
    assert_valid(ANSWER, body)
    (choice,) = body["choices"]  # type: ignore[misc]
    assert choice["logprobs"] == {"content": [token], "refusal": None}
    assert choice["message"]["refusal"] is None and choice["message"]["annotations"] == []


def test_an_answer_whose_chunks_named_little_still_gets_every_required_field() -> None:
    body = assemble([{"choices": [{"delta": {"content": "Hi"}}]}])  # no id, model, finish
    assert_valid(ANSWER, body)
    assert body["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]


def test_completing_a_node_answer_keeps_every_field_it_sent() -> None:
    node_body = {
        "id": "n",
        "object": "chat.completion",
        "created": 3,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "x", "reasoning_content": "r"},
                "finish_reason": "length",
                "stop_reason": None,  # vLLM's
                "logprobs": {"content": []},
            }
        ],
        "kv_transfer_params": None,
    }
    assert _invalid(ANSWER, node_body)
    body = copy.deepcopy(node_body)
    assert complete_spec_fields(body, model="other") is True
    assert_valid(ANSWER, body)
    assert body == {
        **node_body,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "x",
                    "reasoning_content": "r",
                    "refusal": None,
                    "annotations": [],
                },
                "finish_reason": "length",
                "stop_reason": None,
                "logprobs": {"content": [], "refusal": None},
            }
        ],
    }
    assert complete_spec_fields(body, model="other") is False  # complete: nothing to do
    not_an_answer: dict[str, object] = {"error": {"message": "x"}}
    assert complete_spec_fields(not_an_answer, model="m") is False
    assert not_an_answer == {"error": {"message": "x"}}


# -- real answers of the gateway --------------------------------------------------------


async def _gateway(
    two_tiers: TwoTiersFactory, *, edge: Script, cloud: Script, **policy: object
) -> RunningGateway:
    setup = await two_tiers(**policy)
    setup.edge.script, setup.cloud.script = edge, cloud
    return setup.gateway


async def _post(gateway: RunningGateway, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.url + "/v1/chat/completions", json=body) as response,
    ):
        return response.status, await response.json()


async def test_an_answer_fetched_as_a_stream_and_assembled_matches_the_schema(two_tiers) -> None:
    gateway = await _gateway(two_tiers, edge=Script(role_chunk=True), cloud=Script())
    status, body = await _post(gateway, {"model": "auto", "messages": SIMPLE})
    assert status == 200, body
    assert_valid(ANSWER, body)
    assert body["choices"][0]["message"]["content"] == TEXT  # type: ignore[index]


async def test_every_chunk_of_a_stream_matches_the_schema(two_tiers) -> None:
    gateway = await _gateway(two_tiers, edge=Script(role_chunk=True), cloud=Script())
    for include_usage in (True, False):
        out = await raw_stream(
            gateway,
            {
                "model": "auto",
                "messages": SIMPLE,
                "stream_options": {"include_usage": include_usage},
            },
        )
        assert out.done and out.text == TEXT and out.errors == []
        assert (out.chunks[-1].get("usage") is not None) is include_usage
        for chunk in out.chunks:
            assert_valid(CHUNK, chunk)


async def test_a_stream_continued_on_another_node_matches_the_schema(two_tiers) -> None:
    gateway = await _gateway(
        two_tiers,
        edge=Script(behaviour="cut", cut_after=2, role_chunk=True),
        cloud=Script(chunks=(" the", " upstream", "."), role_chunk=True),
    )
    out = await raw_stream(
        gateway,
        {"model": "auto", "messages": SIMPLE, "stream_options": {"include_usage": True}},
    )
    assert out.done and out.text == TEXT and out.errors == []
    assert {c["model"] for c in out.chunks} >= {"edge-model", "cloud-model"}  # continued
    for chunk in out.chunks:
        assert_valid(CHUNK, chunk)


async def test_an_assembled_answer_continued_on_another_node_matches_the_schema(two_tiers) -> None:
    gateway = await _gateway(
        two_tiers,
        edge=Script(behaviour="cut", cut_after=2),
        cloud=Script(chunks=(" the", " upstream", ".")),
    )
    status, body = await _post(gateway, {"model": "auto", "messages": SIMPLE})
    assert status == 200, body
    assert_valid(ANSWER, body)
    assert body["choices"][0]["message"]["content"] == TEXT  # type: ignore[index]
    assert body["model"] == "cloud-model"  # the model that wrote the end of it


@pytest.mark.parametrize(
    ("policy", "extra"),
    [
        ({"fallback": {"stream_internally": False}}, {}),
        ({"tiers": {"edge": {"supports": ["n"]}}}, {"n": 2}),  # n > 1: always plain
    ],
    ids=["stream_internally-off", "n-2"],
)
async def test_a_node_answer_passed_through_is_completed_to_the_schema(
    two_tiers, policy: dict[str, object], extra: dict[str, object]
) -> None:
    # The scripted node answers as llama.cpp does: no refusal, no logprobs.
    gateway = await _gateway(two_tiers, edge=Script(), cloud=Script(), **policy)
    status, body = await _post(gateway, {"model": "auto", "messages": SIMPLE, **extra})
    assert status == 200, body
    assert_valid(ANSWER, body)
    (choice,) = body["choices"]  # type: ignore[misc]
    assert choice["message"]["content"] == TEXT
    assert choice["message"]["refusal"] is None and choice["logprobs"] is None
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}


async def test_a_request_without_model_is_an_openai_error_naming_the_param(two_tiers) -> None:
    gateway = await _gateway(two_tiers, edge=Script(), cloud=Script())
    for body in ({"messages": SIMPLE}, {"messages": SIMPLE, "stream": True}):
        status, error = await _post(gateway, body)
        assert status == 400
        assert_valid(ERROR, error)
        assert error["error"]["type"] == "invalid_request_error"  # type: ignore[index]
        assert error["error"]["param"] == "model"  # type: ignore[index]


async def test_a_policy_default_model_serves_a_request_without_one(two_tiers) -> None:
    # routing.default_model is the opt-in: "cloud" here, so the default visibly applies
    # ("hi" alone would score for the edge).
    setup = await two_tiers(routing={"default_model": "cloud"})
    status, body = await _post(setup.gateway, {"messages": SIMPLE})
    assert status == 200, body
    assert_valid(ANSWER, body)
    assert body["model"] == "cloud-model"
    assert (setup.edge.calls, setup.cloud.calls) == (0, 1)


# -- the edge node's own answers --------------------------------------------------------


@pytest.mark.edge_model
async def test_the_edge_nodes_own_answers_match_the_schema(edge_node: EdgeNodeProcess) -> None:
    request = {"model": edge_node.model, "messages": SIMPLE, "max_tokens": 4, "temperature": 0}
    async with aiohttp.ClientSession() as session:
        url = edge_node.openai_base_url + "/chat/completions"
        async with session.post(url, json=request) as response:
            assert response.status == 200
            assert_valid(ANSWER, await response.json())
        streamed = {**request, "stream": True, "stream_options": {"include_usage": True}}
        async with session.post(url, json=streamed) as response:
            assert response.status == 200
            payloads = [
                line[6:].rstrip(b"\r\n")
                async for line in response.content
                if line.startswith(b"data: ")
            ]
    assert payloads[-1] == b"[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks and chunks[-1]["usage"] is not None
    for chunk in chunks:
        assert_valid(CHUNK, chunk)
