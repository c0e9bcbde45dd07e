"""Helpers the benchmark scripts share: loopback ports, server readiness, SSE, prompts, answers."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

# Short chat prompts the model benchmarks answer greedily to compare two models' answers.
CHAT_PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about autumn.",
    "Explain what a CPU cache is in two sentences.",
    "List three uses of baking soda.",
    "Translate 'good morning' into Spanish.",
    "What is 17 times 3?",
    "Give me a name for a pet turtle.",
    "Summarize the plot of Cinderella.",
    "Why is the sky blue?",
    "Write a Python function that reverses a string.",
    "What should I pack for a beach trip?",
    "Describe the taste of a lemon.",
    "How do plants make food?",
    "Suggest a title for a mystery novel.",
    "What is the boiling point of water in Fahrenheit?",
    "Tell me a fun fact about octopuses.",
    "How many days are in a leap year?",
    "Name two primary colors.",
    "What does a bee make?",
    "Give one tip for sleeping better.",
)


def shared_prefix(a: list[int], b: list[int]) -> int:
    """How many tokens two answers share before they first differ."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_ready(url: str, timeout_s: float = 60, poll_s: float = 0.1) -> None:
    """Poll ``url`` until it answers 200; RuntimeError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready after {timeout_s} s")
            await asyncio.sleep(poll_s)


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The JSON ``data:`` events of a streamed chat answer, without the ``[DONE]`` marker."""
    async for raw in response.content:
        line = raw.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        yield json.loads(line[6:])
