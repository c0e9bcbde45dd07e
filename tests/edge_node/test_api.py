"""The OpenAI API of a real edge node (subprocess, real SmolLM2), through the openai SDK."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from tests.edge_node.conftest import endless_body
from tests.fixtures.edge import EdgeNodeProcess, metric_value

pytestmark = pytest.mark.edge_model

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello in three words."}]


@pytest.fixture
async def client(edge_node: EdgeNodeProcess) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=edge_node.openai_base_url, api_key="x", max_retries=0, timeout=60
    ) as sdk:
        yield sdk


async def test_non_streaming_completion(
    client: openai.AsyncOpenAI, edge_node: EdgeNodeProcess
) -> None:
    completion = await client.chat.completions.create(
        model=edge_node.model,
        messages=HELLO,
        max_tokens=8,
        temperature=0,
    )
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == edge_node.model
    assert completion.created > 1_700_000_000
    [choice] = completion.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens > 5 and 1 <= usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 8


async def test_tier_alias_answers_with_the_served_name(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="edge",
        messages=HELLO,
        max_tokens=2,
    )
    assert completion.model == "smollm2-135m-instruct"


async def test_streaming_with_usage(client: openai.AsyncOpenAI, edge_node: EdgeNodeProcess) -> None:
    stream = await client.chat.completions.create(
        model=edge_node.model,
        messages=HELLO,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert len({chunk.id for chunk in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert len({chunk.created for chunk in chunks}) == 1
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    *content_chunks, final, usage_chunk = chunks
    assert all(c.choices[0].finish_reason is None and c.usage is None for c in content_chunks)
    assert final.choices[0].finish_reason in {"stop", "length"}
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert text
    usage = usage_chunk.usage
    assert 1 <= usage.completion_tokens <= 8 and usage.prompt_tokens > 5
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_sse_framing_without_usage(edge_node: EdgeNodeProcess) -> None:
    body = {"model": "edge", "messages": HELLO, "max_tokens": 4, "stream": True}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{edge_node.openai_base_url}/chat/completions", json=body) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = (await response.read()).decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    payloads = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert all(event.startswith("data: ") for event in events[:-1])
    assert all("usage" not in payload for payload in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] in {"stop", "length"}


async def test_models_and_health(edge_node: EdgeNodeProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{edge_node.openai_base_url}/models") as response:
            listing = await response.json()
        async with http.get(f"{edge_node.url}/health") as response:
            health = (response.status, await response.json())
    assert listing["object"] == "list"
    [card] = listing["data"]
    assert (card["id"], card["object"], card["max_model_len"]) == (edge_node.model, "model", 2048)
    status, body = health
    assert (status, body["status"], body["model"]) == (200, "ok", edge_node.model)
    assert (body["engine"], body["parallel"], body["capacity"]) == ("batched", 4, 4 + 8)
    assert body["kv_cells"]["total"] == 4 * 2048
    assert body["memory"]["resident_bytes"] > 0


async def test_unknown_model_is_404(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"


async def test_context_overflow_is_400(
    client: openai.AsyncOpenAI, edge_node: EdgeNodeProcess
) -> None:
    long_text = "word " * 2500  # ~2500 tokens > n_ctx 2048
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model=edge_node.model, messages=[{"role": "user", "content": long_text}], max_tokens=4
        )
    assert info.value.code == "context_length_exceeded"
    assert info.value.param == "messages"
    assert info.value.type == "invalid_request_error"


WEATHER: dict[str, object] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [WEATHER]}, "tools"),
        ({"tools": [WEATHER], "tool_choice": "required"}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
        ({"logit_bias": {"1": -100}}, "logit_bias"),
        ({"n": 2}, "n"),
    ],
)
async def test_fields_the_node_cannot_honour_are_400_not_dropped(
    client: openai.AsyncOpenAI, edge_node: EdgeNodeProcess, fields: dict[str, object], param: str
) -> None:
    """The reproducer: tools sent to the edge got an invented answer and a 200."""
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model=edge_node.model,
            messages=[{"role": "user", "content": "What's the weather in Paris?"}],
            max_tokens=8,
            extra_body=fields,
        )
    assert (info.value.param, info.value.type) == (param, "invalid_request_error")


async def test_tools_with_tool_choice_none_are_answered_in_text(
    client: openai.AsyncOpenAI, edge_node: EdgeNodeProcess
) -> None:
    completion = await client.chat.completions.create(
        model=edge_node.model,
        messages=HELLO,
        max_tokens=8,
        temperature=0,
        tools=[WEATHER],
        tool_choice="none",
        response_format={"type": "text"},
    )
    assert completion.choices[0].message.content
    assert not completion.choices[0].message.tool_calls


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"model": "edge", "messages": [', "invalid_request"),
        (b"[]", "invalid_request"),
        (
            b'{"model": "edge", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
            "invalid_request",
        ),
    ],
)
async def test_malformed_bodies_are_400(edge_node: EdgeNodeProcess, body: bytes, code: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{edge_node.openai_base_url}/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]


async def test_unknown_route_and_method_are_json_errors(edge_node: EdgeNodeProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{edge_node.url}/nope") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "not_found"
        async with http.get(f"{edge_node.openai_base_url}/chat/completions") as response:
            assert response.status == 405
            assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_traceparent_is_accepted(edge_node: EdgeNodeProcess) -> None:
    headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    body = {"model": "edge", "messages": HELLO, "max_tokens": 2}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{edge_node.openai_base_url}/chat/completions", json=body, headers=headers
        ) as response,
    ):
        assert response.status == 200


async def test_concurrent_requests_all_complete(
    client: openai.AsyncOpenAI, edge_node: EdgeNodeProcess
) -> None:
    async def one(i: int) -> str:
        messages: list[ChatCompletionMessageParam] = [
            {"role": "user", "content": f"Name a color. ({i})"}
        ]
        if i % 2:
            completion = await client.chat.completions.create(
                model=edge_node.model,
                messages=messages,
                max_tokens=6,
            )
            assert completion.usage is not None and completion.usage.completion_tokens <= 6
            return completion.id
        stream = await client.chat.completions.create(
            model=edge_node.model,
            messages=messages,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        assert len({chunk.id for chunk in chunks}) == 1
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 6
        assert chunks[-2].choices[0].finish_reason in {"stop", "length"}
        return chunks[0].id

    ids = await asyncio.gather(*(one(i) for i in range(6)))
    assert len(set(ids)) == 6


async def test_prompt_cache_across_interleaved_conversations(
    client: openai.AsyncOpenAI, edge_node: EdgeNodeProcess
) -> None:
    def conversation(name: str) -> list[ChatCompletionMessageParam]:
        story = f"This is conversation {name}. " + " ".join(f"{name}{i}" for i in range(60))
        return [
            {"role": "system", "content": f"You are assistant {name}."},
            {"role": "user", "content": f"Remember this: {story}. What is it about?"},
        ]

    async def ask(messages: list[ChatCompletionMessageParam]) -> tuple[str, int, int]:
        completion = await client.chat.completions.create(
            model=edge_node.model,
            messages=messages,
            max_tokens=6,
            temperature=0,
        )
        usage = completion.usage
        assert usage is not None and usage.prompt_tokens_details is not None
        cached = usage.prompt_tokens_details.cached_tokens or 0
        return completion.choices[0].message.content or "", usage.prompt_tokens, cached

    hits_before = metric_value(edge_node.url, "edge_prompt_cache_hits_total")
    a1 = conversation("alpha")
    reply_a, prompt_a, _ = await ask(a1)
    _, prompt_b, cached_b = await ask(conversation("bravo"))  # replaces alpha's live KV state
    assert cached_b < prompt_b / 2, "a new conversation shares only the template's first tokens"
    a2: list[ChatCompletionMessageParam] = [
        *a1,
        {"role": "assistant", "content": reply_a},
        {"role": "user", "content": "Thanks. And?"},
    ]
    _, prompt_a2, cached_a2 = await ask(a2)
    # Alpha's first turn is restored from the prompt cache, not evaluated again.
    assert cached_a2 >= prompt_a
    assert prompt_a2 > cached_a2
    assert metric_value(edge_node.url, "edge_prompt_cache_hits_total") >= hits_before + 1


async def test_metrics_parse_and_count(
    client: openai.AsyncOpenAI, edge_node: EdgeNodeProcess
) -> None:
    before = metric_value(edge_node.url, "edge_completion_tokens_total")
    ok_before = metric_value(edge_node.url, "edge_requests_total", {"code": "ok"})
    completion = await client.chat.completions.create(
        model=edge_node.model,
        messages=HELLO,
        max_tokens=3,
    )
    assert completion.usage is not None
    async with aiohttp.ClientSession() as http, http.get(f"{edge_node.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name in [
        "edge_requests",
        "edge_requests_in_flight",
        "edge_queue_depth",
        "edge_prompt_tokens",
        "edge_completion_tokens",
        "edge_time_to_first_token_seconds",
        "edge_decode_tokens_per_second",
        "edge_prompt_cache_hits",
        "edge_prompt_cache_misses",
    ]:
        assert name in families, name
    assert families["edge_time_to_first_token_seconds"].type == "histogram"
    after = metric_value(edge_node.url, "edge_completion_tokens_total")
    assert after - before == completion.usage.completion_tokens
    assert metric_value(edge_node.url, "edge_requests_total", {"code": "ok"}) == ok_before + 1
    assert metric_value(edge_node.url, "edge_requests_in_flight") == 0
    assert metric_value(edge_node.url, "edge_time_to_first_token_seconds_count") >= 1


async def test_stop_sequence_cuts_the_answer(
    client: openai.AsyncOpenAI, edge_node: EdgeNodeProcess
) -> None:
    completion = await client.chat.completions.create(
        model=edge_node.model, messages=HELLO, max_tokens=20, temperature=0, stop=[" "]
    )
    [choice] = completion.choices
    assert choice.finish_reason == "stop"
    assert " " not in (choice.message.content or "")


async def test_disconnect_frees_the_slot_in_the_cli_server(edge_node: EdgeNodeProcess) -> None:
    # python -m edge_node must run aiohttp with handler cancellation, or a client that
    # leaves keeps the model busy until max_tokens.
    cancelled_before = metric_value(edge_node.url, "edge_requests_total", {"code": "cancelled"})
    body = {**endless_body(), "model": edge_node.model}
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{edge_node.openai_base_url}/chat/completions", json=body)
        assert (await response.content.readline()).startswith(b"data: ")
        response.close()
    deadline = time.monotonic() + 10
    while metric_value(edge_node.url, "edge_requests_in_flight") != 0:
        assert time.monotonic() < deadline, "the disconnected stream still holds its slot"
        await asyncio.sleep(0.05)
    cancelled = metric_value(edge_node.url, "edge_requests_total", {"code": "cancelled"})
    assert cancelled == cancelled_before + 1
