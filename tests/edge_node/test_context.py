"""The context window: overflow is a 400, max_tokens is clamped to the room left."""

from __future__ import annotations

import io
import json

import aiohttp
import pytest

from tests.edge_node.conftest import NodeFactory, chat_body

pytestmark = pytest.mark.edge_model

# A small window keeps the prompt that nearly fills it quick to evaluate.
N_CTX = 256


async def test_max_tokens_is_clamped_to_the_room_left(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    node = await start_node(n_ctx=N_CTX)
    body = chat_body("word " * 220, max_tokens=1000, ignore_eos=True)
    async with http.post(f"{node.url}/v1/chat/completions", json=body) as response:
        assert response.status == 200
        completion = await response.json()
    usage = completion["usage"]
    room = N_CTX - usage["prompt_tokens"]
    assert 0 < room < 60, "the prompt should nearly fill the window for this test"
    assert usage["completion_tokens"] == room
    assert completion["choices"][0]["finish_reason"] == "length"


async def test_without_max_tokens_the_whole_room_may_be_used(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    node = await start_node(n_ctx=N_CTX)
    body = chat_body("word " * 220, max_tokens=None, ignore_eos=True)
    async with http.post(f"{node.url}/v1/chat/completions", json=body) as response:
        completion = await response.json()
    usage = completion["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == N_CTX


@pytest.mark.parametrize("words", [260, 2000])
async def test_prompt_that_fills_the_window_is_400(
    start_node: NodeFactory, http: aiohttp.ClientSession, words: int
) -> None:
    node = await start_node(n_ctx=N_CTX)
    body = chat_body("word " * words)
    async with http.post(f"{node.url}/v1/chat/completions", json=body) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == "context_length_exceeded"
    assert (error["type"], error["param"]) == ("invalid_request_error", "messages")
    assert str(N_CTX) in error["message"]
    assert node.metric("edge_requests_total", {"code": "context_length_exceeded"}) == 1


async def test_huge_prompt_is_400_and_huge_body_is_413(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    node = await start_node(n_ctx=N_CTX)
    url = f"{node.url}/v1/chat/completions"

    def body_of(words: int) -> io.BytesIO:
        # A stream: aiohttp warns about sending megabytes of raw bytes in one go.
        return io.BytesIO(json.dumps(chat_body("word " * words)).encode())

    headers = {"Content-Type": "application/json"}
    async with http.post(url, data=body_of(600_000), headers=headers) as response:  # 3 MB
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == "context_length_exceeded"
    assert "at least" in error["message"]  # refused by its size, without tokenizing 3 MB
    async with http.post(url, data=body_of(1_000_000), headers=headers) as response:  # 5 MB
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "payload_too_large"
    assert node.metric("edge_requests_total", {"code": "payload_too_large"}) == 1
