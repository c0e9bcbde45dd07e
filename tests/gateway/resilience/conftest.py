"""Helpers for the fault tests: their policy, raw SSE reading, a black hole."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from tests.conftest import RunningGateway, TwoTiersFactory
from tests.helpers import Node, policy_yaml

SIMPLE = [{"role": "user", "content": "hi"}]
TEXT = "Hello from the upstream."
TIMEOUTS = "{connect: 1, first_token: 2, idle: 2, total: 10}"
"""Room for a retry and a fallback in the total deadline."""


def policy(
    edge: Sequence[Node],
    cloud: Sequence[Node],
    *,
    timeouts: str = TIMEOUTS,
    **options: Any,
) -> str:
    """:func:`policy_yaml` with room for a retry and a fallback in the total deadline."""
    return policy_yaml(edge, cloud, timeouts=timeouts, **options)


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
    """POST a streaming request and read every SSE data payload until the body ends.
    ``model`` is ``auto`` unless ``body`` names one (the API requires it)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + "/v1/chat/completions", json={"stream": True, "model": "auto", **body}
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


@pytest.fixture
def two_tiers(two_tiers: TwoTiersFactory) -> TwoTiersFactory:
    """The shared two-tier setup, with :func:`policy`'s longer total deadline."""
    return functools.partial(two_tiers, timeouts=TIMEOUTS)
