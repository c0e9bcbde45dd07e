"""Fixtures for the session tests: two scripted tiers and a gateway wired to a real Redis."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from tests.conftest import RunningGateway, TwoTiersFactory
from tests.helpers import Metrics, eventually_value, scrape_metrics, sdk
from tests.scripted import ScriptedUpstream

SESSIONS = {"ttl_s": 600, "max_turns": 50, "redis_timeout_s": 0.3}


@dataclass(slots=True)
class SessionSetup:
    edge: ScriptedUpstream
    cloud: ScriptedUpstream
    gateway: RunningGateway
    redis_url: str | None

    def client(self, api_key: str = "unused") -> openai.AsyncOpenAI:
        """The official SDK pointed at the gateway, without retries of its own."""
        return sdk(self.gateway, api_key=api_key)


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


async def spool_written_out(gateway: RunningGateway) -> Metrics:
    """Wait until the spool is empty: an entry leaves it only once Redis acknowledged its
    write, so nothing is left that could still land (or land twice)."""
    return await eventually_value(
        lambda: scrape_metrics(gateway),
        lambda metrics: metrics.value("gateway_session_spool_turns") == 0,
        15,
        "the spool written out",
    )


@pytest.fixture
def make_sessions(two_tiers: TwoTiersFactory) -> Callable[..., Awaitable[SessionSetup]]:
    """Build the two-tier setup with ``sessions:`` (``SESSIONS`` unless given), wired to
    Redis at ``redis_url`` (none: sessions off); other keywords go to the policy builder
    (``tiers={"edge": {"context_window": 512}}``, ``routing={"rules": [...]}``)."""

    async def start(
        redis_url: str | None,
        *,
        sessions: Mapping[str, object] = SESSIONS,
        api_keys: frozenset[str] = frozenset(),
        **policy: Any,
    ) -> SessionSetup:
        edge, cloud, gateway = await two_tiers(
            sessions=sessions,
            settings={"redis_url": redis_url, "api_keys": api_keys},
            **policy,
        )
        return SessionSetup(edge=edge, cloud=cloud, gateway=gateway, redis_url=redis_url)

    return start
