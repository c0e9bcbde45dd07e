"""A key's tiers: the decision moved (or refused) by restrict_to_key, and over HTTP an
edge-only key never reaches the cloud: not routed there, not pinned there, not by
fallback when the edge fails, not by continuing a broken stream."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable

import openai
import pytest

from gateway.accounts.model import ApiKey
from gateway.accounts.store import KeyStore
from gateway.accounts.tiers import KEY_TIERS_REASON, allowed_tiers, restrict_to_key
from gateway.errors import Forbidden
from gateway.policy.model import Policy
from gateway.policy.parse import parse_policy
from gateway.redis_client import close_client, redis_client
from gateway.routing.classifier import Complexity
from gateway.routing.decide import Decision
from gateway.routing.needs import request_needs
from gateway.upstream.forward import TIER_NOT_ALLOWED
from hybrid_common.protocol import Tier
from tests.conftest import TwoTiers, TwoTiersFactory
from tests.fixtures.redis import RedisServer
from tests.helpers import HI, policy_yaml, sdk
from tests.scripted import Script

EDGE_ONLY: frozenset[Tier] = frozenset({"edge"})
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def key(tiers: frozenset[Tier]) -> ApiKey:
    return ApiKey(id="key_0123456789ab", name="k", hash="0" * 64, created_at=0.0, tiers=tiers)


def decision(tier: Tier, kind: str = "score", model: str | None = None) -> Decision:
    return Decision(
        tier=tier,
        reason=f"why {tier}",
        reason_kind=kind,
        complexity=Complexity(score=0.9, prompt_tokens=3),
        model=model,
    )


@pytest.fixture
def policy() -> Policy:
    return parse_policy(
        policy_yaml([("http://e:1", "edge-model")], [("http://c:1", "cloud-model")])
    )


@pytest.mark.parametrize(
    ("tiers", "given", "tier"),
    [
        (EDGE_ONLY, decision("cloud"), "edge"),
        (EDGE_ONLY, decision("cloud", "rule:long"), "edge"),
        (EDGE_ONLY, decision("cloud", "needs"), "edge"),
        (frozenset({"cloud"}), decision("edge"), "cloud"),
    ],
)
def test_a_routed_request_moves_to_a_tier_the_key_may_use(
    policy: Policy, tiers: frozenset[Tier], given: Decision, tier: Tier
) -> None:
    moved = restrict_to_key(given, key(tiers), policy)
    assert moved.tier == tier and moved.reason_kind == KEY_TIERS_REASON
    assert moved.reason == f"key allows {tier} only (routed {given.tier}: {given.reason})"
    assert (
        dataclasses.replace(
            moved, tier=given.tier, reason=given.reason, reason_kind=given.reason_kind
        )
        == given
    )


@pytest.mark.parametrize(
    ("given", "k"),
    [
        (decision("edge"), key(EDGE_ONLY)),
        (decision("cloud", "pinned:model", "cloud-model"), key(frozenset({"edge", "cloud"}))),
        (decision("cloud"), None),
    ],
)
def test_allowed_decisions_pass_unchanged(
    policy: Policy, given: Decision, k: ApiKey | None
) -> None:
    assert restrict_to_key(given, k, policy) is given


@pytest.mark.parametrize(
    ("given", "param"),
    [
        (decision("cloud", "pinned:model", "cloud-model"), "model"),
        (decision("cloud", "pinned:model"), "model"),  # model: cloud
        (decision("cloud", "pinned:header"), "x-gateway-tier"),
    ],
)
def test_a_pin_on_a_forbidden_tier_is_403(policy: Policy, given: Decision, param: str) -> None:
    with pytest.raises(Forbidden) as info:
        restrict_to_key(given, key(EDGE_ONLY), policy)
    assert (info.value.status, info.value.code, info.value.param) == (
        403,
        "permission_denied",
        param,
    )
    assert "edge tier only" in info.value.message


def test_a_need_only_the_forbidden_tier_serves_is_403(policy: Policy) -> None:
    needs = request_needs({"messages": HI, "tools": [TOOL], "tool_choice": "required"})
    assert needs  # the edge node serves no tools; the cloud's default does
    with pytest.raises(Forbidden) as info:
        restrict_to_key(decision("cloud", "needs"), key(EDGE_ONLY), policy, needs)
    assert info.value.param == "tools" and "does not serve" in info.value.message


def test_allowed_tiers() -> None:
    assert allowed_tiers(None) == {"edge", "cloud"}
    assert allowed_tiers(key(EDGE_ONLY)) == EDGE_ONLY


# Over HTTP, with the key in Redis.


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[KeyStore]:
    client = redis_client(redis_server.url, max_connections=4, timeout_s=2.0)
    yield KeyStore(client)
    await close_client(client)


@pytest.fixture
def gateway(
    two_tiers: TwoTiersFactory, redis_server: RedisServer
) -> Callable[..., Awaitable[TwoTiers]]:
    async def start(**policy: object) -> TwoTiers:
        settings = {"redis_url": redis_server.url, "key_store": True}
        return await two_tiers(settings=settings, **policy)

    return start


async def test_routed_to_the_cloud_but_answered_by_the_edge(
    gateway: Callable[..., Awaitable[TwoTiers]], store: KeyStore
) -> None:
    setup = await gateway(cloud_above=0.0)  # every request scores for the cloud
    _, free = await store.create(name="free", tiers=["edge"])
    _, full = await store.create(name="full")
    async with sdk(setup.gateway, api_key=full) as client:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=HI)
    assert raw.headers["x-gateway-tier"] == "cloud"  # the same request, unrestricted
    async with sdk(setup.gateway, api_key=free) as client:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=HI)
    assert raw.headers["x-gateway-tier"] == "edge"
    assert raw.headers["x-gateway-route-reason"].startswith("key allows edge only (routed cloud")
    assert setup.cloud.calls == 1  # the unrestricted request only


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failing_edge_is_503_not_a_cloud_answer(
    gateway: Callable[..., Awaitable[TwoTiers]], store: KeyStore, stream: bool
) -> None:
    setup = await gateway()
    _, free = await store.create(name="free", tiers=["edge"])
    _, full = await store.create(name="full")
    setup.edge.script = Script(behaviour="status", status=500)
    async with sdk(setup.gateway, api_key=full) as client:
        answer = await client.chat.completions.with_raw_response.create(model="auto", messages=HI)
    assert answer.headers["x-gateway-tier"] == "cloud"  # unrestricted: the cloud took over
    cloud_calls = setup.cloud.calls
    async with sdk(setup.gateway, api_key=free) as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="auto", messages=HI, stream=stream)
    assert info.value.status_code == 503
    assert info.value.body["code"] == "no_healthy_upstream"  # type: ignore[index]
    assert f"cloud: {TIER_NOT_ALLOWED}" in info.value.message
    assert setup.cloud.calls == cloud_calls


async def test_a_broken_stream_is_not_continued_on_the_cloud(
    gateway: Callable[..., Awaitable[TwoTiers]], store: KeyStore
) -> None:
    setup = await gateway()
    _, free = await store.create(name="free", tiers=["edge"])
    _, full = await store.create(name="full")
    setup.edge.script = Script(behaviour="cut", cut_after=2)
    async with sdk(setup.gateway, api_key=full) as client:
        stream = await client.chat.completions.create(model="auto", messages=HI, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert setup.cloud.calls == 1 and text  # unrestricted: continued on the cloud
    async with sdk(setup.gateway, api_key=free) as client:
        stream = await client.chat.completions.create(model="auto", messages=HI, stream=True)
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
    assert setup.cloud.calls == 1


@pytest.mark.parametrize(
    ("model", "headers", "param"),
    [
        ("cloud-model", {}, "model"),
        ("cloud", {}, "model"),
        ("auto", {"x-gateway-tier": "cloud"}, "x-gateway-tier"),
    ],
)
async def test_a_pinned_cloud_is_403(
    gateway: Callable[..., Awaitable[TwoTiers]],
    store: KeyStore,
    model: str,
    headers: dict[str, str],
    param: str,
) -> None:
    setup = await gateway()
    _, free = await store.create(name="free", tiers=["edge"])
    async with sdk(setup.gateway, api_key=free) as client:
        with pytest.raises(openai.PermissionDeniedError) as info:
            await client.chat.completions.create(model=model, messages=HI, extra_headers=headers)
    assert info.value.body["code"] == "permission_denied"  # type: ignore[index]
    assert info.value.body["param"] == param  # type: ignore[index]
    assert setup.cloud.calls == 0 and setup.edge.calls == 0
