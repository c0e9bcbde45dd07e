"""Mid-stream continuation against a real vLLM server: the prefill form the gateway sends
(``continue_final_message: true, add_generation_prompt: false``) is accepted and the
answer is finished in the same stream."""

from __future__ import annotations

import pytest

from tests.fixtures.vllm import VllmNode
from tests.gateway.resilience.conftest import SIMPLE, policy, raw_stream
from tests.helpers import scrape_metrics
from tests.scripted import Script

# The vllm fixture plugin widens this test's timeout by vLLM's start-up budget.
pytestmark = pytest.mark.vllm


async def test_real_vllm_continues_a_cut_answer_by_prefill(
    vllm_node: VllmNode,
    upstreams,
    make_gateway,
) -> None:
    edge = await upstreams("edge-model")
    edge.script = Script(behaviour="cut", cut_after=3, chunks=("The", " sea", " is", " blue"))
    gateway = await make_gateway(
        policy(
            [(edge.url, "edge-model")],
            [(vllm_node.url, vllm_node.model)],
            timeouts="{connect: 2, first_token: 60, idle: 30, total: 120}",
        ),
        health_checks=False,
    )
    out = await raw_stream(
        gateway,
        {
            "messages": SIMPLE,
            "max_tokens": 12,
            "temperature": 0,
            "stream_options": {"include_usage": True},
        },
    )
    assert out.errors == [], out.events
    assert out.done and out.finish_reasons in (["stop"], ["length"])
    assert out.text.startswith("The sea is") and len(out.text) > len("The sea is")
    writers = {c["model"] for c in out.chunks if c["choices"]}
    assert writers == {"edge-model", vllm_node.model}
    usage = out.chunks[-1]["usage"]
    assert usage["completion_tokens"] > 3  # the cut attempt's 3 chunks plus vLLM's tokens
    metrics = await scrape_metrics(gateway)
    continued = {"from_tier": "edge", "to_tier": "cloud", "form": "prefill", "result": "ok"}
    # Accepted as a prefill: no rejection, no fallback to words.
    assert metrics.value("gateway_continuations_total", **continued) == 1
