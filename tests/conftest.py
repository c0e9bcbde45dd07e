"""Shared fixtures: scripted upstreams and an in-process gateway on a real loopback port."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.http.server import GatewayRunner
from gateway.settings import Settings
from gateway.telemetry import Tracing
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


def policy_yaml(
    edge: list[tuple[str, str]],
    cloud: list[tuple[str, str]],
    *,
    extra: str = "",
    timeouts: str = "{connect: 1, first_token: 2, idle: 2, total: 5}",
    cloud_above: float = 0.55,
) -> str:
    """A test policy: nodes as (url, model) pairs, short timeouts, the heuristic classifier."""

    def nodes(items: list[tuple[str, str]], tier: str) -> str:
        if not items:
            return "[]"
        return "".join(
            f'\n      - {{url: "{url}", model: "{model}", name: {tier}-{i + 1}}}'
            for i, (url, model) in enumerate(items)
        )

    return textwrap.dedent(
        """\
        version: 1
        tiers:
          edge:
            context_window: 2048
            nodes: {edge}
          cloud:
            context_window: 8192
            nodes: {cloud}
        routing:
          cloud_above: {cloud_above}
          classifier: {{kind: heuristic}}
          allow_pinning: true
        fallback:
          timeouts_s: {timeouts}
        health:
          interval_s: 0.2
          timeout_s: 2
          failure_threshold: 2
          open_s: 0.5
        """
    ).format(
        edge=nodes(edge, "edge"),
        cloud=nodes(cloud, "cloud"),
        cloud_above=cloud_above,
        timeouts=timeouts,
    ) + textwrap.dedent(extra)


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
