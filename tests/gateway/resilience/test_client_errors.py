"""4xx answers: the request itself is at fault, so it is not retried; the upstream's
reason reaches the client. context_length_exceeded is the exception: a larger window
may take it, and it goes there once, without asking the same model again."""

from __future__ import annotations

import openai
import pytest

from tests.gateway.resilience.conftest import SIMPLE, TEXT, policy
from tests.helpers import chat, sdk
from tests.scripted import Script


@pytest.mark.parametrize("stream", [False, True])
async def test_context_length_exceeded_moves_to_the_larger_window_once(
    upstreams, make_gateway, stream
) -> None:
    e1, e2, cloud = (
        await upstreams("edge-model"),
        await upstreams("edge-model"),
        await upstreams("cloud-model"),
    )
    for edge in (e1, e2):
        edge.script = Script(behaviour="status", status=400, error_code="context_length_exceeded")
    gateway = await make_gateway(
        policy([(e1.url, "edge-model"), (e2.url, "edge-model")], [(cloud.url, "cloud-model")]),
        health_checks=False,
    )
    reply = await chat(gateway, stream=stream)
    assert reply.text == TEXT
    assert reply.headers["x-gateway-tier"] == "cloud"
    assert reply.headers["x-gateway-fallback"] == "edge-1:context_length"
    # Neither the same node nor the other node of the same (too small) model is asked.
    assert (e1.calls, e2.calls, cloud.calls) == (1, 0, 1)


async def test_context_length_exceeded_on_a_pinned_model_is_passed_on(two_tiers) -> None:
    edge, cloud, gateway = await two_tiers()
    edge.script = Script(
        behaviour="status",
        status=400,
        error_code="context_length_exceeded",
        error_message="This model's maximum context length is 2048 tokens.",
    )
    async with sdk(gateway) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="edge-model", messages=SIMPLE)
    assert info.value.body["code"] == "context_length_exceeded"
    assert "2048" in info.value.body["message"]
    assert (edge.calls, cloud.calls) == (1, 0)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "content_policy_violation"), (403, "forbidden"), (422, "invalid_value")],
)
async def test_client_errors_are_passed_on_and_never_retried(
    two_tiers, stream, status, code
) -> None:
    edge, cloud, gateway = await two_tiers()
    edge.script = Script(
        behaviour="status", status=status, error_code=code, error_message="refused: policy 7"
    )
    async with sdk(gateway) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="auto", messages=SIMPLE, stream=stream)
    # A 400 whatever the node's 4xx was (a 403 from a node is about the gateway's own
    # credentials, not the client's), with the node's error body unchanged.
    assert info.value.body["code"] == code
    assert info.value.body["message"] == "refused: policy 7"
    assert (edge.calls, cloud.calls) == (1, 0)
    # The node answered: its circuit stays closed and it keeps serving.
    edge.script = Script()
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=SIMPLE)
    assert raw.headers["x-gateway-node"] == "edge-1"
