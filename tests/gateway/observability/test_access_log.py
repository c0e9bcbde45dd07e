"""The access line of a chat request: route reason, score, fallback (failed and skipped),
tokens, time to first token and the session id, hashed; in JSON and in text."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import time
from collections.abc import Iterator

import aiohttp
import pytest

from gateway.http.access import session_hash
from gateway.logs import JsonFormatter, TextFormatter
from gateway.state import POOL
from tests.conftest import policy_yaml
from tests.gateway.observability.conftest import SIMPLE
from tests.helpers import eventually, sdk
from tests.scripted import Script

SESSIONS = {"ttl_s": 600, "redis_timeout_s": 0.3}


@pytest.fixture
def access_log() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """What ``gateway.access`` logs at INFO: (JSON lines, text lines)."""
    logger = logging.getLogger("gateway.access")
    streams = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(stream) for stream in streams]
    handlers[0].setFormatter(JsonFormatter())
    handlers[1].setFormatter(TextFormatter())
    level = logger.level
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield streams
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.setLevel(level)


async def _lines(stream: io.StringIO, count: int, timeout_s: float = 5.0) -> list[str]:
    """The first ``count`` lines once written: the access line follows the end of the body,
    which a client may not wait for (the SDK leaves at ``[DONE]``)."""
    deadline = time.monotonic() + timeout_s
    while len(lines := stream.getvalue().splitlines()) < count:
        assert time.monotonic() < deadline, f"{len(lines)} access lines, expected {count}"
        await asyncio.sleep(0.01)
    return lines[:count]


async def _eventually_unhealthy(gateway, tier: str) -> None:  # type: ignore[no-untyped-def]
    node = gateway.app[POOL].nodes(tier)[0]
    await eventually(lambda: node.healthy is False, 5, "the node marked down")


def test_session_hash_is_a_plain_sha256_prefix() -> None:
    assert session_hash("chat-42") == hashlib.sha256(b"chat-42").hexdigest()[:16]
    assert len(session_hash("ünïcode \ud800")) == 16  # never raises on what a header held


@pytest.mark.redis
async def test_a_streamed_session_request_that_fell_back_has_every_field(
    upstreams, make_gateway, redis_server, access_log
) -> None:
    json_lines, text_lines = access_log
    edge, cloud = await upstreams("edge-model"), await upstreams("cloud-model")
    cloud.health_status = 503  # routed to the cloud, whose node is down: skipped
    gateway = await make_gateway(
        policy_yaml(
            [(edge.url, "edge-model")],
            [(cloud.url, "cloud-model")],
            cloud_above=0.0,
            sessions=SESSIONS,
        ),
        redis_url=redis_server.url,
    )
    await _eventually_unhealthy(gateway, "cloud")
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto",
            messages=SIMPLE,
            stream=True,
            extra_headers={"x-session-id": "chat-42"},
        )
        [c async for c in raw.parse()]

    (line,) = await _lines(json_lines, 1)
    assert "chat-42" not in line  # the raw session id is never logged
    entry = json.loads(line)
    assert entry["status"] == 200
    assert (entry["tier"], entry["node"]) == ("edge", "edge-1")
    assert entry["route_tier"] == "cloud"
    assert entry["route_reason"] == raw.headers["x-gateway-route-reason"]
    assert entry["route_reason"].startswith("score ")
    assert isinstance(entry["complexity_score"], float) and entry["complexity_score"] > 0.0
    assert entry["fallback"] == ["cloud-1:unhealthy"]
    assert (entry["tokens_in"], entry["tokens_out"]) == (5, 5)  # scripted: 5 a message, 5 chunks
    ttft_ms = entry["time_to_first_token_ms"]
    assert isinstance(ttft_ms, float) and 0 < ttft_ms <= entry["duration_ms"]
    assert entry["session_hash"] == hashlib.sha256(b"chat-42").hexdigest()[:16]
    reason = json.dumps(entry["route_reason"])
    assert entry["message"] == (
        f"POST /v1/chat/completions 200 {entry['duration_ms']:.1f} ms edge/edge-1 "
        f"route=cloud reason={reason} score={entry['complexity_score']:.4f} "
        f"fallback=cloud-1:unhealthy tokens=5/5 ttft={ttft_ms:.1f}ms "
        f"session={entry['session_hash']}"
    )
    (text,) = text_lines.getvalue().splitlines()
    assert text.endswith(f"gateway.access: {entry['message']} [request_id={entry['request_id']}]")


async def test_a_plain_request_and_a_failed_one(two_tiers, access_log) -> None:
    json_lines, text_lines = access_log
    edge, cloud, gateway = await two_tiers()
    async with sdk(gateway) as client:
        await client.chat.completions.create(model="auto", messages=SIMPLE)  # type: ignore[arg-type]
    edge.script = cloud.script = Script(behaviour="status", status=500)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gateway.url + "/v1/chat/completions", json={"model": "auto", "messages": SIMPLE}
        ) as response:
            assert response.status == 503
        async with http.get(gateway.url + "/v1/models") as response:
            assert response.status == 200

    served, failed, models = (json.loads(x) for x in json_lines.getvalue().splitlines())
    # Non-streaming: no time to first token; no session id: no hash.
    assert served["route_tier"] == "edge" and served["fallback"] == []
    assert (served["tokens_in"], served["tokens_out"]) == (5, 5)
    assert served["time_to_first_token_ms"] is None and served["session_hash"] is None
    assert served["message"].endswith(
        f"edge/edge-1 route=edge reason={json.dumps(served['route_reason'])} "
        f"score={served['complexity_score']:.4f} tokens=5/5"
    )
    # Nothing answered: the attempts are listed, no tokens were served.
    assert failed["status"] == 503 and failed["tier"] is None
    assert failed["fallback"] == [
        "edge-1:status_5xx",
        "edge-1:status_5xx",
        "cloud-1:status_5xx",
        "cloud-1:status_5xx",
    ]
    assert failed["tokens_in"] is None and failed["tokens_out"] is None
    assert " fallback=edge-1:status_5xx,edge-1:status_5xx,cloud-1:status_5xx," in failed["message"]
    # Not a chat request: the same fields, empty.
    assert models["route_reason"] is None and models["fallback"] == []
    assert models["message"].endswith(" ms")
    text = text_lines.getvalue().splitlines()
    assert text[0].split("gateway.access: ", 1)[1] == (
        served["message"] + f" [request_id={served['request_id']}]"
    )


@pytest.mark.redis
async def test_the_session_api_logs_its_route_not_the_session_id(
    two_tiers, redis_server, access_log
) -> None:
    json_lines, _ = access_log
    _, _, gateway = await two_tiers(sessions=SESSIONS, settings={"redis_url": redis_server.url})
    async with aiohttp.ClientSession() as http:
        for method in ("GET", "DELETE"):
            async with http.request(method, f"{gateway.url}/v1/sessions/alice.smith") as response:
                assert response.status == 404
    entries = [json.loads(line) for line in await _lines(json_lines, 2)]
    assert [e["path"] for e in entries] == ["/v1/sessions/{session_id}"] * 2
    assert all("alice.smith" not in line for line in json_lines.getvalue().splitlines())
