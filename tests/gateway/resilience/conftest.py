"""Helpers for the fault tests: SDK client, raw SSE reading, /metrics samples, a black hole."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningGateway, policy_yaml

SIMPLE = [{"role": "user", "content": "hi"}]
TEXT = "Hello from the upstream."


def sdk(gateway: RunningGateway) -> openai.AsyncOpenAI:
    """The official client, without its own retries: the gateway's behaviour is under test."""
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def policy(
    edge: list[tuple[str, str]],
    cloud: list[tuple[str, str]],
    *,
    fallback: str = "",
    timeouts: str = "{connect: 1, first_token: 2, idle: 2, total: 10}",
    health: str = "",
) -> str:
    """A test policy with extra ``fallback:`` keys (YAML lines, 2-space indented)."""
    text = policy_yaml(edge, cloud, timeouts=timeouts)
    if fallback:
        text = text.replace("fallback:\n", "fallback:\n" + fallback.rstrip("\n") + "\n", 1)
    if health:
        start = text.index("health:\n")
        text = text[:start] + health
    return text


@dataclass(slots=True)
class RawStream:
    """Everything a streaming client received, as data payloads."""

    status: int
    headers: dict[str, str]
    events: list[str] = field(default_factory=list)

    @property
    def chunks(self) -> list[dict[str, object]]:
        return [json.loads(e) for e in self.events if e != "[DONE]" and '"error"' not in e[:12]]

    @property
    def errors(self) -> list[dict[str, object]]:
        out = []
        for event in self.events:
            if event == "[DONE]":
                continue
            parsed = json.loads(event)
            if "error" in parsed:
                out.append(parsed["error"])
        return out

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1] == "[DONE]"

    @property
    def text(self) -> str:
        parts = []
        for chunk in self.chunks:
            for choice in chunk.get("choices") or []:  # type: ignore[union-attr]
                content = choice.get("delta", {}).get("content")
                if content:
                    parts.append(content)
        return "".join(parts)

    @property
    def finish_reasons(self) -> list[str]:
        return [
            choice["finish_reason"]
            for chunk in self.chunks
            for choice in chunk.get("choices") or []  # type: ignore[union-attr]
            if choice.get("finish_reason")
        ]


async def raw_stream(gateway: RunningGateway, body: dict[str, object]) -> RawStream:
    """POST a streaming request and read every SSE data payload until the body ends."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + "/v1/chat/completions", json={"stream": True, **body}
        ) as response,
    ):
        out = RawStream(status=response.status, headers=dict(response.headers))
        if response.status != 200:
            out.events.append(await response.text())
            return out
        async for line in response.content:
            line = line.rstrip(b"\r\n")
            if line.startswith(b"data: "):
                out.events.append(line[6:].decode())
        return out


async def metric_samples(
    gateway: RunningGateway,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the gateway's /metrics, parsed with prometheus_client's own parser."""
    async with aiohttp.ClientSession() as session, session.get(gateway.url + "/metrics") as r:
        text = await r.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A URL whose TCP connects hang: a listening socket with a full accept queue."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for filler in fillers:
            filler.close()
        server.close()
