"""No API key, client or admin, reaches the logs, the traces, the metrics or the nodes.

One gateway with ``GATEWAY_KEY_STORE=redis``, tracing into memory (prompts captured too)
and every logger at DEBUG, driven the way operators and clients do: the admin API (create,
list, show, update, revoke), stored keys with limits and a budget (answers streamed and
not, a 429), a revoked, an unknown and a misplaced key (401s), and
Redis stopped (a cached key served, limits failing open, the ledger retrying). Then every
log line (JSON and text, and each record's fields), every span (name, attributes, events,
status, resource), the whole /metrics page and every request the nodes received are
searched for each key, with and without its ``sk-gw-`` prefix, and for its full SHA-256.
Each of those sources is first shown to hold the key's *id*, so the search cannot pass
because a source was empty.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import aiohttp
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan

from gateway.logs import JsonFormatter, TextFormatter
from tests.conftest import TwoTiersFactory
from tests.fixtures.redis import RedisServer
from tests.gateway.observability.conftest import Spans, make_spans
from tests.helpers import HI, eventually, eventually_value, scrape_metrics, sdk
from tests.scripted import ScriptedUpstream

pytestmark = pytest.mark.redis

ADMIN = "adm-" + secrets.token_urlsafe(24)
PRICING = {
    "edge": {"prompt_usd_per_1m": 1, "completion_usd_per_1m": 2},
    "cloud": {"prompt_usd_per_1m": 10, "completion_usd_per_1m": 20},
}


@dataclass(slots=True)
class Logs:
    """Everything logged while the test runs: formatted both ways, and the raw records."""

    json_lines: io.StringIO = field(default_factory=io.StringIO)
    text_lines: io.StringIO = field(default_factory=io.StringIO)
    records: list[logging.LogRecord] = field(default_factory=list)

    def everything(self) -> str:
        raw = "\n".join(repr(record.__dict__) for record in self.records)
        return "\n".join((self.json_lines.getvalue(), self.text_lines.getvalue(), raw))

    def access(self) -> list[dict[str, object]]:
        return [
            entry
            for entry in map(json.loads, self.json_lines.getvalue().splitlines())
            if entry["logger"] == "gateway.access"
        ]


CLIENT_LOGGERS = ("openai", "httpx", "httpcore")
"""The test's own clients log what they send (at DEBUG): not the gateway's logs."""


def _gateway_side(record: logging.LogRecord) -> bool:
    return not record.name.startswith(CLIENT_LOGGERS)


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self._records = records

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append(record)


@pytest.fixture
def logs() -> Iterator[Logs]:
    """Every logger at DEBUG, into :class:`Logs` (the root's level put back afterwards)."""
    kept = Logs()
    handlers: list[logging.Handler] = [
        logging.StreamHandler(kept.json_lines),
        logging.StreamHandler(kept.text_lines),
        _Keep(kept.records),
    ]
    handlers[0].setFormatter(JsonFormatter())
    handlers[1].setFormatter(TextFormatter())
    for handler in handlers:
        handler.addFilter(_gateway_side)
    root = logging.getLogger()
    level = root.level
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield kept
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def spans() -> Spans:
    return make_spans(capture_content=True)


async def admin(
    http: aiohttp.ClientSession, base: str, method: str, path: str, body: object = None
) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with http.request(method, base + path, json=body, headers=headers) as response:
        return response.status, await response.json()


def span_text(span: ReadableSpan) -> str:
    """Everything a span exports, as text."""
    parts = [span.name, repr(dict(span.attributes or {})), repr(span.status.description)]
    parts += [f"{e.name} {dict(e.attributes or {})!r}" for e in span.events]
    parts += [repr(dict(link.attributes or {})) for link in span.links]
    parts.append(repr(dict(span.resource.attributes)))
    return "\n".join(parts)


def seen_text(*nodes: ScriptedUpstream) -> str:
    return "\n".join(f"{seen.headers!r} {seen.body!r}" for node in nodes for seen in node.seen)


def forms(secret: str) -> list[str]:
    """How a key could leak: whole, without its prefix, and as its full SHA-256."""
    out = [secret, hashlib.sha256(secret.encode()).hexdigest()]
    if secret.startswith("sk-gw-"):
        out.append(secret.removeprefix("sk-gw-"))
    return out


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_no_key_reaches_logs_traces_metrics_or_nodes(
    two_tiers: TwoTiersFactory,
    redis_server: RedisServer,
    spans: Spans,
    logs: Logs,
    http: aiohttp.ClientSession,
) -> None:
    edge, cloud, gateway = await two_tiers(
        tracing=spans.tracing,
        settings={"redis_url": redis_server.url, "key_store": True, "admin_key": ADMIN},
        pricing=PRICING,
    )
    base = gateway.url

    # The admin API, every route.
    status, created = await admin(
        http,
        base,
        "POST",
        "/admin/keys",
        {
            "name": "tenant-quiet",
            "rpm": 4,
            "tpm": 100_000,
            "budget": {"period": "day", "limit_usd": 1.0, "soft_limit_usd": 0.000001},
        },
    )
    assert status == 201, created
    plain, key_id = str(created["key"]), str(created["id"])
    status, other = await admin(http, base, "POST", "/admin/keys", {"name": "to-revoke"})
    assert status == 201, other
    revoked_plain, revoked_id = str(other["key"]), str(other["id"])
    one = f"/admin/keys/{key_id}"
    for method, path, body in [
        ("GET", "/admin/keys", None),
        ("GET", one, None),
        ("PATCH", one, {"metadata": {"plan": "free"}}),
        ("DELETE", f"/admin/keys/{revoked_id}", None),
    ]:
        status, answer = await admin(http, base, method, path, body)
        assert status == 200, answer
    unknown = "sk-gw-" + secrets.token_urlsafe(32)
    secrets_to_hide = [plain, revoked_plain, unknown, ADMIN]

    # Client requests: answered (streamed and not), rate limited, refused.
    async with sdk(gateway, api_key=plain) as client:
        await client.chat.completions.create(model="auto", messages=HI)
        stream = await client.chat.completions.create(
            model="auto", messages=HI, stream=True, stream_options={"include_usage": True}
        )
        _ = [chunk async for chunk in stream]
        await client.chat.completions.create(model="cloud", messages=HI)
        fourth = await client.chat.completions.create(model="auto", messages=HI, stream=True)
        _ = [chunk async for chunk in fourth]
        with pytest.raises(openai.RateLimitError):  # rpm 4: the fifth
            await client.chat.completions.create(model="auto", messages=HI)
    for wrong in (revoked_plain, unknown, ADMIN):
        async with sdk(gateway, api_key=wrong) as client:
            with pytest.raises(openai.AuthenticationError):
                await client.chat.completions.create(model="auto", messages=HI)
    async with http.get(base + "/admin/keys", headers={"Authorization": f"Bearer {plain}"}) as r:
        assert r.status == 401  # a client key is no admin key

    async def settled() -> float:
        page = await scrape_metrics(gateway)
        return sum(
            page.get("gateway_key_requests_total", key_name="tenant-quiet", tier=t, model=m)
            for t, m in (("edge", "edge-model"), ("cloud", "cloud-model"))
        )

    await eventually_value(settled, lambda n: n == 4, what="four requests settled")

    # Redis away: the cached key still serves (limits fail open), the ledger keeps retrying.
    redis_server.stop()
    async with sdk(gateway, api_key=plain) as client:
        await eventually_value(
            lambda: _served(client), bool, what="a request served from the cached key"
        )
    await eventually(
        lambda: "usage ledger: writing to Redis failed" in logs.everything(),
        what="the ledger's failure logged",
    )
    redis_server.start()

    # 6 admin, 5 with the key, 4 refused, 1 or more while Redis was away (probes: no span)
    await spans.settled(servers=16)
    async with http.get(base + "/metrics") as response:
        metrics_text = await response.text()

    # Each source names the key by its id (so each was captured, and is searched).
    access = logs.access()
    keyed_lines = [entry for entry in access if entry.get("key_id") == key_id]
    assert len(keyed_lines) >= 5, access
    assert all(f" key={key_id}" in str(entry["message"]) for entry in keyed_lines)
    assert any(
        attrs.get("gateway.key_id") == key_id for attrs in (s.attributes or {} for s in spans.all())
    )
    assert 'key_name="tenant-quiet"' in metrics_text
    assert edge.calls and cloud.calls
    # ... and none holds any key.
    sources = {
        "logs": logs.everything(),
        "spans": "\n".join(span_text(span) for span in spans.all()),
        "metrics": metrics_text,
        "nodes": seen_text(edge, cloud),
    }
    for name, text in sources.items():
        for secret in secrets_to_hide:
            for form in forms(secret):
                assert form not in text, f"{name} hold a key ({form[:10]}...)"


async def _served(client: openai.AsyncOpenAI) -> bool:
    answer = await client.chat.completions.with_raw_response.create(model="auto", messages=HI)
    return answer.http_response.status_code == 200
