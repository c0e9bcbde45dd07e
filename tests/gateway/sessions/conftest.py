"""Fixtures for the session tests: two scripted tiers and a gateway wired to a real Redis."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import openai
import pytest

from tests.conftest import RunningGateway, policy_yaml
from tests.scripted import ScriptedUpstream

SESSIONS = """\
sessions:
  ttl_s: 600
  max_turns: 50
  redis_timeout_s: 0.3
"""


@dataclass(slots=True)
class SessionSetup:
    edge: ScriptedUpstream
    cloud: ScriptedUpstream
    gateway: RunningGateway
    redis_url: str | None

    def client(self) -> openai.AsyncOpenAI:
        """The official SDK pointed at the gateway, without retries of its own."""
        return openai.AsyncOpenAI(
            base_url=self.gateway.url + "/v1", api_key="unused", max_retries=0
        )


def sid(session: str, tier: str | None = None, **more: str) -> dict[str, str]:
    """Headers naming a session (and pinning a tier, when given)."""
    headers = {"x-session-id": session, **more}
    if tier is not None:
        headers["x-gateway-tier"] = tier
    return headers


async def ask(client: openai.AsyncOpenAI, headers: dict[str, str], *messages, **kw):
    """One chat request with the SDK; plain strings are user messages. Raw response."""
    msgs = [m if isinstance(m, dict) else {"role": "user", "content": m} for m in messages]
    return await client.chat.completions.with_raw_response.create(
        model="auto", messages=msgs, extra_headers=headers, **kw
    )


def seen_messages(upstream: ScriptedUpstream, index: int = -1) -> list[dict[str, object]]:
    """The messages an upstream received in its ``index``-th request."""
    messages = upstream.seen[index].body["messages"]
    assert isinstance(messages, list)
    return messages


def texts(messages: list[dict[str, object]]) -> list[str]:
    return [f"{m['role']}:{m['content']}" for m in messages]


@pytest.fixture
async def make_sessions(upstreams, make_gateway):
    """Build an edge + cloud pair of scripted upstreams and a gateway with ``sessions:``."""

    async def start(
        redis_url: str | None,
        *,
        sessions: str = SESSIONS,
        edge_window: int = 2048,
        cloud_window: int = 8192,
        edit: Callable[[str], str] = lambda text: text,
        **settings: object,
    ) -> SessionSetup:
        """``edit`` rewrites the policy text (rules, per-tier keys) before the gateway starts."""
        edge = await upstreams("edge-model")
        cloud = await upstreams("cloud-model")
        policy = policy_yaml(
            [(edge.url, "edge-model")], [(cloud.url, "cloud-model")], extra=sessions
        )
        policy = policy.replace("context_window: 2048", f"context_window: {edge_window}")
        policy = policy.replace("context_window: 8192", f"context_window: {cloud_window}")
        gateway = await make_gateway(
            edit(policy), health_checks=False, redis_url=redis_url, **settings
        )
        return SessionSetup(edge=edge, cloud=cloud, gateway=gateway, redis_url=redis_url)

    return start
