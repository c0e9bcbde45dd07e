"""Helpers the benchmark scripts share: loopback ports, server readiness, SSE, prompts, answers,
the in-process speed and agreement measurements of the model benchmarks, the CPU's name."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from edge_node.model import ChatModel

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


def agreement(reference: Sequence[list[int]], got: Sequence[list[int]]) -> tuple[int, float]:
    """(answers identical token for token, mean share of each reference answer's tokens
    before the other first differs): how far ``got`` stays with ``reference``, pair by pair."""
    pairs = list(zip(reference, got, strict=True))
    same = sum(a == b for a, b in pairs)
    return same, statistics.fmean(shared_prefix(a, b) / max(len(a), 1) for a, b in pairs)


def greedy(model: ChatModel, prompt: list[int], tokens: int) -> list[int]:
    """Up to ``tokens`` tokens decoded greedily after ``prompt`` from an empty context,
    without the end-of-generation token; leaves the prompt and answer in the context."""
    import numpy as np  # only the model benchmarks need it: the others import this module too

    llm = model.llm
    llm.reset()
    llm.eval(prompt)
    answer: list[int] = []
    while len(answer) < tokens:
        token = int(np.argmax(model.last_logits()))
        if model.is_end_of_generation(token):
            break
        answer.append(token)
        llm.eval([token])
    return answer


def facts_text(facts: int) -> str:
    """A long, regular English text for prompt-evaluation timings (cut to a token count)."""
    return " ".join(
        f"Fact {i}: the lighthouse has {i} steps painted color {i % 7}." for i in range(facts)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Speed:
    """One speed measurement: prompt evaluation and greedy decode, tokens per second."""

    prompt_tps: float
    decode_tps: float


def measure_speed(model: ChatModel, prompt: list[int], decode_tokens: int) -> Speed:
    """Time ``prompt`` evaluated from an empty context, then ``decode_tokens`` greedy
    one-token decodes after it; the context is empty again afterwards."""
    import numpy as np

    llm = model.llm
    llm.reset()
    started = time.perf_counter()
    llm.eval(prompt)
    prompt_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(decode_tokens):
        llm.eval([int(np.argmax(model.last_logits()))])
    decode_s = time.perf_counter() - started
    llm.reset()
    return Speed(prompt_tps=len(prompt) / prompt_s, decode_tps=decode_tokens / decode_s)


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo; None where there is none (not Linux, some ARM)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


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
