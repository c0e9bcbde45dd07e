"""Nodes from GATEWAY_EDGE_URLS / GATEWAY_CLOUD_URLS keep to the policy's per-node limit."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp

from gateway.policy.parse import parse_policy
from gateway.settings import settings_from_env
from gateway.state import POOL
from tests.conftest import GatewayFactory
from tests.helpers import eventually, policy_yaml
from tests.scripted import Script, ScriptedUpstream

StartUpstream = Callable[[str], Awaitable[ScriptedUpstream]]

HI = {"role": "user", "content": "hi"}


def limited(per_node: int, tier: str = "edge") -> str:
    """The test policy, no nodes of its own, ``max_concurrency_per_node`` on ``tier``."""
    return policy_yaml(tiers={tier: {"max_concurrency_per_node": per_node}})


def test_env_nodes_take_the_tiers_limit() -> None:
    settings = settings_from_env(
        {
            "GATEWAY_EDGE_URLS": "http://e1:8001=small,http://e2:8001=small",
            "GATEWAY_CLOUD_URLS": "http://c1:8000=big",
        }
    )
    policy = parse_policy(limited(3, "cloud"))
    for tier, nodes in settings.node_overrides().items():
        policy = policy.with_nodes(tier, nodes)
    assert [n.max_concurrency for n in policy.tiers["cloud"].nodes] == [3]
    assert [n.max_concurrency for n in policy.tiers["edge"].nodes] == [16, 16]  # the default
    assert [n.name for n in policy.tiers["edge"].nodes] == ["edge-1", "edge-2"]


async def test_an_env_node_never_gets_more_than_the_policys_limit(
    upstreams: StartUpstream, make_gateway: GatewayFactory
) -> None:
    """The reproducer: 6 concurrent requests, limit 2, the node defined by the environment."""
    edge = await upstreams("edge-model")
    edge.script = Script(first_token_delay_s=1.0)
    overrides = settings_from_env({"GATEWAY_EDGE_URLS": f"{edge.url}=edge-model"})
    gateway = await make_gateway(limited(2), edge_nodes=overrides.edge_nodes)

    async def ask(session: aiohttp.ClientSession) -> tuple[int, dict[str, object]]:
        async with session.post(
            f"{gateway.url}/v1/chat/completions", json={"model": "edge", "messages": [HI]}
        ) as response:
            return response.status, await response.json()

    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(ask(session) for _ in range(6)))
    assert edge.peak_in_flight == 2  # reached, never passed
    assert [n.spec.max_concurrency for n in gateway.app[POOL].nodes("edge")] == [2]
    statuses = sorted(status for status, _ in answers)
    assert statuses.count(200) >= 2 and set(statuses) <= {200, 503}, answers
    for status, body in answers:
        if status == 503:  # the node was full and the cloud tier has none
            assert body["error"]["code"] == "no_healthy_upstream"  # type: ignore[index]


async def test_a_reloaded_limit_applies_to_env_nodes(
    upstreams: StartUpstream, make_gateway: GatewayFactory
) -> None:
    cloud = await upstreams("cloud-model")
    overrides = settings_from_env({"GATEWAY_CLOUD_URLS": f"{cloud.url}=cloud-model"})
    gateway = await make_gateway(limited(4, "cloud"), cloud_nodes=overrides.cloud_nodes)
    pool = gateway.app[POOL]
    assert [n.spec.max_concurrency for n in pool.nodes("cloud")] == [4]

    gateway.policy_path.write_text(limited(1, "cloud"))
    await eventually(
        lambda: [n.spec.max_concurrency for n in pool.nodes("cloud")] == [1],
        10,
        "the reloaded limit reached the env node",
    )
    assert [n.spec.url for n in pool.nodes("cloud")] == [cloud.url]  # still the env's node


async def test_a_node_named_by_its_openai_base_url_is_served_and_healthy(
    upstreams: StartUpstream, make_gateway: GatewayFactory
) -> None:
    """``http://host:port/v1``, as OpenAI clients are configured, in the policy and in
    GATEWAY_CLOUD_URLS: the chat calls and the health checks reach the server's own paths."""
    edge, cloud = await upstreams("edge-model"), await upstreams("cloud-model")
    overrides = settings_from_env({"GATEWAY_CLOUD_URLS": f"{cloud.url}/v1/=cloud-model"})
    gateway = await make_gateway(
        policy_yaml([(f"{edge.url}/v1", "edge-model")]),
        health_checks=True,
        cloud_nodes=overrides.cloud_nodes,
    )
    async with aiohttp.ClientSession() as session:
        for tier in ("edge", "cloud"):
            async with session.post(
                f"{gateway.url}/v1/chat/completions", json={"model": tier, "messages": [HI]}
            ) as response:
                assert response.status == 200, await response.text()
                assert response.headers["x-gateway-tier"] == tier
    pool = gateway.app[POOL]
    await eventually(
        lambda: all(node.healthy for tier in ("edge", "cloud") for node in pool.nodes(tier))
    )
    assert (edge.calls, cloud.calls) == (1, 1)
