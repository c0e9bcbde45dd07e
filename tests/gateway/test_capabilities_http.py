"""Capabilities through the HTTP API, against scripted nodes: a request that needs a feature
is sent only to nodes that declare it, and with none to send it to, it is a 400 naming the
field before any node is asked."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import TwoTiers, TwoTiersFactory
from tests.helpers import policy_yaml, sdk
from tests.scripted import unused_port

SIMPLE = [{"role": "user", "content": "What's the weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
async def tiers(two_tiers: TwoTiersFactory) -> TwoTiers:
    """The shared two-tier setup, started as it is."""
    return await two_tiers()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_simple_tool_call_goes_to_the_tier_that_serves_tools(tiers, stream) -> None:
    edge, cloud, gateway = tiers
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=SIMPLE, tools=[WEATHER], tool_choice="required", stream=stream
        )
        if stream:
            _ = [chunk async for chunk in raw.parse()]
    # "hi"-simple by score, but the edge declares no tools: the cloud's default does.
    assert raw.headers["x-gateway-tier"] == "cloud"
    assert raw.headers["x-gateway-route-reason"] == "needs tool_choice_required: cloud"
    assert (edge.calls, cloud.calls) == (0, 1)
    assert cloud.seen[0].body["tools"] == [WEATHER]  # passed on untouched
    assert cloud.seen[0].body["tool_choice"] == "required"


async def test_tool_choice_auto_served_nowhere_is_a_400_before_any_node(tiers) -> None:
    edge, cloud, gateway = tiers
    async with sdk(gateway) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="auto", messages=SIMPLE, tools=[WEATHER])
    assert info.value.status_code == 400
    assert (info.value.param, info.value.type) == ("tools", "invalid_request_error")
    assert 'tool_choice "auto"' in info.value.message
    assert (edge.calls, cloud.calls) == (0, 0)


@pytest.mark.parametrize(
    ("model", "headers"), [("edge", {}), ("edge-model", {}), ("auto", {"x-gateway-tier": "edge"})]
)
async def test_a_tools_request_pinned_to_the_edge_is_refused(tiers, model, headers) -> None:
    edge, cloud, gateway = tiers
    async with sdk(gateway) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model=model,
                messages=SIMPLE,
                tools=[WEATHER],
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
                extra_headers=headers,
            )
    assert info.value.param == "tools"
    assert (edge.calls, cloud.calls) == (0, 0)


async def test_fallback_never_lands_on_a_node_without_the_capability(
    upstreams, make_gateway
) -> None:
    edge = await upstreams("edge-model")
    dead_cloud = f"http://127.0.0.1:{unused_port()}"
    gateway = await make_gateway(
        policy_yaml([(edge.url, "edge-model")], [(dead_cloud, "cloud-model")]),
        health_checks=False,
    )
    async with sdk(gateway) as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(
                model="auto",
                messages=SIMPLE,
                response_format={"type": "json_schema", "json_schema": {"name": "w"}},
            )
        assert info.value.status_code == 503  # the cloud is down, and the edge can't do it
        plain = await client.chat.completions.with_raw_response.create(
            model="cloud", messages=SIMPLE
        )
    assert edge.calls == 1  # only the plain request, which may fall back
    assert plain.headers["x-gateway-tier"] == "edge"


async def test_capabilities_come_from_the_policy_per_node(upstreams, make_gateway) -> None:
    edge, plain_cloud, vision = (
        await upstreams("edge-model"),
        await upstreams("cloud-model"),
        await upstreams("vision-model"),
    )
    policy = policy_yaml(
        [(edge.url, "edge-model")],
        [
            (plain_cloud.url, "cloud-model"),
            {"url": vision.url, "model": "vision-model", "supports": ["images", "tools"]},
        ],
    )
    gateway = await make_gateway(policy, health_checks=False)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    async with sdk(gateway) as client:
        for _ in range(3):
            raw = await client.chat.completions.with_raw_response.create(
                model="auto",
                messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}],
            )
            assert raw.headers["x-gateway-node"] == "cloud-2"
            assert raw.headers["x-gateway-route-reason"] == "needs images: cloud"
        auto = await client.chat.completions.with_raw_response.create(
            model="auto", messages=SIMPLE, tools=[WEATHER]
        )
        assert auto.headers["x-gateway-node"] == "cloud-2"
    assert (edge.calls, plain_cloud.calls, vision.calls) == (0, 0, 4)


async def test_a_has_tools_rule_decides_the_tier_and_says_so(two_tiers: TwoTiersFactory) -> None:
    agents = {"when": {"has_tools": True}, "tier": "cloud", "reason": "agents"}
    edge, cloud, gateway = await two_tiers(routing={"rules": [agents]})
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=SIMPLE, tools=[WEATHER], tool_choice="required"
        )
        none = await client.chat.completions.with_raw_response.create(
            model="auto", messages=SIMPLE, tools=[WEATHER], tool_choice="none"
        )
    assert raw.headers["x-gateway-route-reason"] == "rule agents"
    # tool_choice "none": no call can be made, so the request has no tools to serve.
    assert none.headers["x-gateway-tier"] == "edge"
    assert (edge.calls, cloud.calls) == (1, 1)
