"""Two ``python -m gateway serve`` processes sharing one redis-server: a key created on
one serves on the other, and a key revoked on one is refused by the other within 1 s."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from tests.fixtures.redis import RedisServer, free_port
from tests.helpers import eventually_value, policy_yaml, serve_process
from tests.scripted import ScriptedUpstream

ADMIN = "admin-sekrit"
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}


async def test_a_revoke_on_one_gateway_is_seen_by_the_other_within_a_second(
    tmp_path: Path,
    redis_server: RedisServer,
    upstreams: Callable[[str], Awaitable[ScriptedUpstream]],
) -> None:
    edge = await upstreams("edge-model")
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml([(edge.url, "edge-model")], []))
    env = {
        "GATEWAY_POLICY": str(policy),
        "REDIS_URL": redis_server.url,
        "REDIS_CLUSTER": "",
        "GATEWAY_KEY_STORE": "redis",
        "GATEWAY_ADMIN_KEY": ADMIN,
        "GATEWAY_API_KEYS": "",
    }
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with (
        serve_process({**env, "GATEWAY_PORT": str(free_port())}) as one,
        serve_process({**env, "GATEWAY_PORT": str(free_port())}) as other,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(one.url + "/admin/keys", json={"name": "shared"}, headers=admin) as r:
            assert r.status == 201, await r.text()
            created = await r.json()
        client = {"Authorization": f"Bearer {created['key']}"}

        async def chat_status(gateway: str) -> int:
            async with http.post(gateway + "/v1/chat/completions", json=CHAT, headers=client) as r:
                await r.read()
                return r.status

        assert await chat_status(other.url) == 200  # created on one, served by the other
        assert await chat_status(other.url) == 200  # ... now from its copy
        async with http.delete(one.url + f"/admin/keys/{created['id']}", headers=admin) as r:
            assert r.status == 200, await r.text()
        revoked_at = time.monotonic()
        assert await chat_status(one.url) == 401  # the replica that revoked it: at once
        await eventually_value(
            lambda: chat_status(other.url),
            lambda status: status == 401,
            timeout_s=5.0,
            what="the other gateway refusing the revoked key",
        )
        elapsed_s = time.monotonic() - revoked_at
        assert elapsed_s < 1.0, f"the other gateway took {elapsed_s:.3f} s"
