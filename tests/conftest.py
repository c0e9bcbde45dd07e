"""Shared fixtures: scripted upstreams and an in-process gateway on a real loopback port,
and the two together as a two-tier setup."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.http.server import GatewayRunner
from gateway.settings import Settings
from gateway.telemetry import Tracing
from tests.helpers import policy_yaml
from tests.scripted import ScriptedUpstream

pytest_plugins = ["tests.fixtures.edge", "tests.fixtures.redis", "tests.fixtures.vllm"]


@dataclass(slots=True)
class RunningGateway:
    server: TestServer
    app: web.Application
    policy_path: Path

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


GatewayFactory = Callable[..., Awaitable[RunningGateway]]


class GatewayTestServer(TestServer):
    """aiohttp's TestServer on :class:`GatewayRunner`: aiohttp's own error answers are
    OpenAI-style JSON, as under ``python -m gateway serve`` (whose runner adds limits)."""

    async def _make_runner(self, **kwargs: Any) -> GatewayRunner:
        return GatewayRunner(self.app, **kwargs)


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    """Start gateways from policy text; all are stopped at the end of the test."""
    started: list[TestServer] = []

    async def start(
        policy_text: str,
        *,
        health_checks: bool = True,
        tracing: Tracing | None = None,
        **settings: object,
    ) -> RunningGateway:
        path = tmp_path / f"policy-{len(started)}.yaml"
        path.write_text(policy_text)
        app = await create_app(
            Settings(policy_path=path, policy_poll_s=0.05, **settings),  # type: ignore[arg-type]
            health_checks=health_checks,
            tracing=tracing,
        )
        server = GatewayTestServer(app, host="127.0.0.1")
        await server.start_server()
        started.append(server)
        return RunningGateway(server=server, app=app, policy_path=path)

    yield start
    for server in reversed(started):
        await server.close()


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[[str], Awaitable[ScriptedUpstream]]]:
    """Start scripted upstreams by model name; all are closed at the end of the test."""
    started: list[ScriptedUpstream] = []

    async def start(model: str) -> ScriptedUpstream:
        upstream = await ScriptedUpstream(model=model).start()
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        await upstream.close()


class TwoTiers(NamedTuple):
    """A scripted edge and cloud upstream (edge-1, cloud-1) and a gateway over them."""

    edge: ScriptedUpstream
    cloud: ScriptedUpstream
    gateway: RunningGateway


TwoTiersFactory = Callable[..., Awaitable[TwoTiers]]


@pytest.fixture
async def two_tiers(
    upstreams: Callable[[str], Awaitable[ScriptedUpstream]], make_gateway: GatewayFactory
) -> TwoTiersFactory:
    """Start a two-tier setup: ``await two_tiers(**policy)`` with :func:`policy_yaml`'s
    options (``cloud_above=0.3``, ``health={"open_s": 60}``...). The gateway runs no
    health checks unless ``health_checks=True``; ``tracing`` and ``settings`` go to it."""

    async def start(
        *,
        health_checks: bool = False,
        tracing: Tracing | None = None,
        settings: Mapping[str, object] | None = None,
        **policy: Any,
    ) -> TwoTiers:
        edge, cloud = await upstreams("edge-model"), await upstreams("cloud-model")
        text = policy_yaml([(edge.url, "edge-model")], [(cloud.url, "cloud-model")], **policy)
        gateway = await make_gateway(
            text, health_checks=health_checks, tracing=tracing, **(settings or {})
        )
        return TwoTiers(edge=edge, cloud=cloud, gateway=gateway)

    return start


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
