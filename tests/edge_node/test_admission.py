"""Admission, disconnects and loading, on in-process nodes with the real model.

The queueing tests run the one-at-a-time engine (``parallel=1``); test_batching.py has
their counterparts for the batching engine."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import aiohttp
import openai
import pytest

from edge_node.model import ChatModel, load_model
from edge_node.settings import Settings
from tests.edge_node.conftest import InProcessNode, NodeFactory, chat_body, endless_body

pytestmark = pytest.mark.edge_model


async def open_stream(http: aiohttp.ClientSession, node: InProcessNode) -> aiohttp.ClientResponse:
    """Start an endless stream and wait for its first event, so it is generating."""
    response = await http.post(f"{node.url}/v1/chat/completions", json=endless_body())
    assert response.status == 200
    first = await response.content.readline()
    assert first.startswith(b"data: ")
    return response


async def test_requests_beyond_the_queue_get_503_at_once(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    node = await start_node(parallel=1, max_queue=1, retry_after_s=2)
    running = await open_stream(http, node)
    queued = asyncio.create_task(
        http.post(f"{node.url}/v1/chat/completions", json=chat_body(max_tokens=3))
    )
    await node.wait_for_metric("edge_queue_depth", 1)

    async with openai.AsyncOpenAI(base_url=f"{node.url}/v1", api_key="x", max_retries=0) as sdk:
        started = time.perf_counter()
        with pytest.raises(openai.InternalServerError) as info:
            await sdk.chat.completions.create(
                model="edge", messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
        refused_in_s = time.perf_counter() - started
    assert info.value.status_code == 503
    assert info.value.code == "overloaded"
    assert info.value.response.headers["Retry-After"] == "2"
    assert refused_in_s < 2.0, "overload must be answered at once, not after queueing"
    assert node.metric("edge_requests_total", {"code": "overloaded"}) == 1

    running.close()  # the client leaves: the queued request gets the model
    async with await queued as response:
        assert response.status == 200
        body = await response.json()
    assert body["choices"][0]["message"]["content"] is not None
    await node.wait_for_metric("edge_requests_in_flight", 0)


async def test_disconnect_stops_generation_and_frees_the_slot(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    node = await start_node(parallel=1, max_queue=0)  # one request at a time
    running = await open_stream(http, node)
    async with http.post(f"{node.url}/v1/chat/completions", json=chat_body()) as response:
        assert response.status == 503  # the slot is taken

    running.close()
    await node.wait_for_metric("edge_requests_in_flight", 0, timeout_s=10)
    assert node.metric("edge_requests_total", {"code": "cancelled"}) == 1
    # Stopped at the next token, far from the 1800 it asked for.
    assert 0 < node.metric("edge_completion_tokens_total") < 1800

    async with http.post(f"{node.url}/v1/chat/completions", json=chat_body()) as response:
        assert response.status == 200


async def test_disconnect_while_queued_frees_the_slot_at_once(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    node = await start_node(parallel=1, max_queue=1)
    running = await open_stream(http, node)
    waiting = asyncio.create_task(http.post(f"{node.url}/v1/chat/completions", json=endless_body()))
    await node.wait_for_metric("edge_queue_depth", 1)

    waiting.cancel()  # the queued client gives up before its turn
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await node.wait_for_metric("edge_queue_depth", 0, timeout_s=5)
    assert node.metric("edge_requests_in_flight") == 1  # only the running stream is left

    replacement = asyncio.create_task(
        http.post(f"{node.url}/v1/chat/completions", json=chat_body(max_tokens=2))
    )
    await node.wait_for_metric("edge_queue_depth", 1)  # admitted, not refused
    running.close()
    async with await replacement as response:
        assert response.status == 200


async def test_health_is_503_while_loading_then_200(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    gate = threading.Event()

    def gated_loader(settings: Settings) -> ChatModel:
        # The real loader, held back until the test has seen the loading state.
        gate.wait(timeout=60)
        return load_model(settings)

    node = await start_node(loader=gated_loader, wait_ready=False)
    try:
        async with http.get(f"{node.url}/health") as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            assert (await response.json())["status"] == "loading"
        async with http.post(f"{node.url}/v1/chat/completions", json=chat_body()) as response:
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "model_loading"
        async with http.get(f"{node.url}/v1/models") as response:
            assert response.status == 200  # the model's name is known before it loads
    finally:
        gate.set()
    await node.wait_ready(http)
    async with http.post(f"{node.url}/v1/chat/completions", json=chat_body()) as response:
        assert response.status == 200
    assert node.metric("edge_model_loaded") == 1


async def test_load_failure_keeps_reporting_503(
    start_node: NodeFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)  # a header and nothing else
    node = await start_node(model_path=broken, wait_ready=False)
    deadline = time.monotonic() + 10
    while True:
        async with http.get(f"{node.url}/health") as response:
            body = await response.json()
            assert response.status == 503
        if body["status"] == "failed" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert body["status"] == "failed" and body["error"]
    async with http.post(f"{node.url}/v1/chat/completions", json=chat_body()) as response:
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "unavailable"
