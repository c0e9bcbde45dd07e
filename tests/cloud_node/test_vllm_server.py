"""The real vLLM server (the installed build's development profile) answers the openai SDK."""

from __future__ import annotations

import urllib.request

import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.upstream.vllm_load import parse_vllm_metrics
from tests.fixtures.vllm import VllmNode
from tests.helpers import sdk

pytestmark = pytest.mark.vllm

QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Name one colour of the rainbow."}
]


async def test_models_lists_the_served_name(vllm_node: VllmNode) -> None:
    async with sdk(vllm_node) as client:
        models = await client.models.list()
    assert [model.id for model in models.data] == [vllm_node.model]


async def test_non_streaming_answer(vllm_node: VllmNode) -> None:
    async with sdk(vllm_node) as client:
        reply = await client.chat.completions.create(
            model=vllm_node.model, messages=QUESTION, max_tokens=16, temperature=0
        )
    assert reply.model == vllm_node.model
    text = reply.choices[0].message.content
    assert text is not None and text.strip()
    assert reply.choices[0].finish_reason in {"stop", "length"}
    assert reply.usage is not None
    assert 0 < reply.usage.completion_tokens <= 16
    assert reply.usage.prompt_tokens > 5  # the chat template wraps the question


async def test_streaming_answer_with_usage(vllm_node: VllmNode) -> None:
    pieces: list[str] = []
    finish_reasons: list[str] = []
    usage_tokens: list[int] = []
    async with sdk(vllm_node) as client:
        stream = await client.chat.completions.create(
            model=vllm_node.model,
            messages=QUESTION,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            assert chunk.model == vllm_node.model
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                if choice.finish_reason is not None:
                    finish_reasons.append(choice.finish_reason)
            if chunk.usage is not None:
                usage_tokens.append(chunk.usage.completion_tokens)
    assert "".join(pieces).strip()
    assert len([piece for piece in pieces if piece]) > 1  # really streamed, not one blob
    assert finish_reasons in (["stop"], ["length"])
    assert len(usage_tokens) == 1 and 0 < usage_tokens[0] <= 16


def test_metrics_expose_the_load_gauges(vllm_node: VllmNode) -> None:
    with urllib.request.urlopen(vllm_node.url + "/metrics", timeout=10) as response:
        text = response.read().decode("utf-8")
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running",
                 "vllm:kv_cache_usage_perc"):  # fmt: skip
        assert f'{name}{{engine="0",model_name="{vllm_node.model}"}}' in text
    load = parse_vllm_metrics(text)
    # Nothing is in flight between tests.
    assert (load.waiting, load.running) == (0.0, 0.0)
    assert 0.0 <= load.kv_cache_usage <= 1.0
