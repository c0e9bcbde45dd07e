"""Continuous batching with the real model: many requests in one context, each with its
own sampling, and the KV cells they hold."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.edge_node.conftest import InProcessNode, NodeFactory, chat_body, endless_body
from tests.helpers import eventually

pytestmark = pytest.mark.edge_model

RUNNING_CELLS = "edge_kv_cells_used"


def cells(node: InProcessNode, state: str) -> float:
    return node.metric(RUNNING_CELLS, {"state": state})


async def complete(
    http: aiohttp.ClientSession, node: InProcessNode, body: dict[str, Any]
) -> dict[str, Any]:
    async with http.post(f"{node.url}/v1/chat/completions", json=body) as response:
        assert response.status == 200, await response.text()
        completion: dict[str, Any] = await response.json()
    return completion


def text_of(completion: dict[str, Any]) -> str:
    content: str = completion["choices"][0]["message"]["content"]
    return content


async def open_stream(http: aiohttp.ClientSession, node: InProcessNode) -> aiohttp.ClientResponse:
    """An endless stream, returned once its first event arrived (so it is decoding)."""
    response = await http.post(f"{node.url}/v1/chat/completions", json=endless_body())
    assert response.status == 200
    assert (await response.content.readline()).startswith(b"data: ")
    return response


async def test_interleaved_requests_answer_as_they_do_alone(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    node = await start_node(parallel=4, prompt_cache_bytes=0)
    bodies = [
        chat_body("Write a poem about the sea.", max_tokens=40),
        chat_body("List three fruits.", max_tokens=30, presence_penalty=1.5),
        chat_body("Tell me about the moon.", max_tokens=50, temperature=0.9, seed=7, top_p=0.8),
        chat_body("Describe a busy market.", max_tokens=40),
    ]
    alone = [text_of(await complete(http, node, body)) for body in bodies]
    # A stop string that occurs in the middle of the first answer cuts it there.
    words = alone[0].split()
    stop = words[len(words) // 2]
    bodies.append(chat_body("Write a poem about the sea.", max_tokens=40, stop=[stop]))
    cut = text_of(await complete(http, node, bodies[-1]))
    assert cut == alone[0][: alone[0].index(stop)]
    alone.append(cut)

    steps_before = node.metric("edge_decode_steps_total")
    together = await asyncio.gather(*(complete(http, node, body) for body in bodies))
    steps = node.metric("edge_decode_steps_total") - steps_before

    assert [text_of(c) for c in together] == alone
    assert together[-1]["choices"][0]["finish_reason"] == "stop"
    tokens = sum(c["usage"]["completion_tokens"] for c in together)
    assert steps < tokens, "the requests were decoded in shared steps, not one by one"


async def test_a_cancelled_sequence_frees_its_cells_while_others_go_on(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    node = await start_node(parallel=2, prompt_cache_bytes=0)
    leaving = await open_stream(http, node)
    staying = asyncio.create_task(complete(http, node, chat_body(max_tokens=60, ignore_eos=True)))
    await eventually(lambda: node.metric("edge_sequences_running") == 2, what="both decoding")
    held = cells(node, "running")
    assert held > 0

    leaving.close()
    await eventually(lambda: node.metric("edge_sequences_running") == 1, what="one left")
    assert node.metric("edge_requests_total", {"code": "cancelled"}) == 1
    assert cells(node, "running") < held
    completion = await staying
    assert completion["usage"]["completion_tokens"] == 60
    # The finished request keeps its cells for reuse; the cancelled one kept none.
    await eventually(lambda: cells(node, "running") == 0, what="no running cells")
    kept = cells(node, "cached")
    usage = completion["usage"]
    assert kept == usage["prompt_tokens"] + usage["completion_tokens"] - 1


async def test_requests_beyond_the_sequences_and_the_queue_get_503(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    node = await start_node(parallel=2, max_queue=1, retry_after_s=3)
    streams = [await open_stream(http, node), await open_stream(http, node)]
    queued = asyncio.create_task(complete(http, node, chat_body(max_tokens=3)))
    await node.wait_for_metric("edge_queue_depth", 1)

    async with http.post(f"{node.url}/v1/chat/completions", json=chat_body()) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "3"
        error = (await response.json())["error"]
    assert error["code"] == "overloaded"
    assert "2 generating, 1 queued" in error["message"]

    streams[0].close()  # a sequence is free: the queued request gets it
    assert (await queued)["choices"][0]["message"]["content"] is not None
    streams[1].close()
    await node.wait_for_metric("edge_requests_in_flight", 0)


async def test_a_shared_pool_that_runs_short_preempts_and_both_answers_complete(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    # Two answers of 200 tokens each need more than the 256 cells the pool has together:
    # the younger is preempted, and evaluated again once the older one is done.
    node = await start_node(
        parallel=2, n_ctx=256, kv_cells=256, kv_unified=True, prompt_cache_bytes=0
    )
    bodies = [
        chat_body("Count the stars.", max_tokens=200, ignore_eos=True),
        chat_body("Name the rivers.", max_tokens=200, ignore_eos=True),
    ]
    together = await asyncio.gather(*(complete(http, node, body) for body in bodies))
    assert all(c["usage"]["completion_tokens"] == 200 for c in together)
    assert all(c["choices"][0]["finish_reason"] == "length" for c in together)
    assert node.metric("edge_preemptions_total") >= 1
    await node.wait_for_metric("edge_requests_in_flight", 0)
    assert cells(node, "running") == 0 and cells(node, "cached") <= 256


async def test_a_long_prompt_joins_in_chunks_while_others_decode(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    node = await start_node(parallel=2, prefill_chunk=32, prompt_cache_bytes=0)
    stream = await open_stream(http, node)
    steps_before = node.metric("edge_decode_steps_total")
    long = await complete(http, node, chat_body("word " * 600, max_tokens=1))
    steps = node.metric("edge_decode_steps_total") - steps_before
    stream.close()
    # Every step took at most 32 of its prompt tokens, and each step also gave the
    # running stream its next token.
    assert steps >= long["usage"]["prompt_tokens"] / 32


async def test_conversations_outnumbering_the_sequences_keep_their_prefixes(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    node = await start_node(parallel=2)

    def conversation(name: str) -> list[dict[str, str]]:
        story = " ".join(f"{name}{i}" for i in range(60))
        return [{"role": "user", "content": f"Remember {story}. What is it about?"}]

    first = {}
    for name in ("alpha", "bravo", "charlie"):  # charlie's turn takes alpha's idle slot
        body = chat_body(max_tokens=6, messages=conversation(name))
        first[name] = (await complete(http, node, body), body)
    completion, body = first["alpha"]
    messages = [
        *body["messages"],
        {"role": "assistant", "content": text_of(completion)},
        {"role": "user", "content": "And then?"},
    ]
    again = await complete(http, node, chat_body(max_tokens=4, messages=messages))
    cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
    # Restored from the RAM snapshot taken when charlie's prompt cut alpha's cells.
    assert cached >= completion["usage"]["prompt_tokens"]
    assert node.metric("edge_prompt_cache_entries") >= 1


async def test_health_and_metrics_show_memory_and_kv_cells(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    node = await start_node(parallel=4, kv_cells=4096)
    await complete(http, node, chat_body(max_tokens=4))
    async with http.get(f"{node.url}/health") as response:
        health = await response.json()
    assert (health["status"], health["engine"], health["parallel"]) == ("ok", "batched", 4)
    assert health["kv_cells"]["total"] == 4096 and health["kv_cells"]["cached"] > 0
    memory = health["memory"]
    model = memory["models"]["smollm2-135m-instruct"]
    assert model["kv_cache_bytes"] == 4096 * model["kv_bytes_per_cell"]
    assert 50 * 2**20 < model["weights_bytes"] < node.settings.model_path.stat().st_size
    assert memory["peak_resident_bytes"] >= memory["resident_bytes"] > model["weights_bytes"]
    assert node.metric("edge_resident_memory_bytes") > model["weights_bytes"]
    assert node.metric("edge_kv_cells_total") == 4096
    labels = {"model": "smollm2-135m-instruct", "part": "weights"}
    assert node.metric("edge_model_memory_bytes", labels) == model["weights_bytes"]
