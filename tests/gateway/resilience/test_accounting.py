"""Accounting: ``model`` and ``usage`` name the model that answered, and /metrics counts
a request once, under the tier that answered; failed attempts are attempts, not answers."""

from __future__ import annotations

from tests.gateway.resilience.conftest import SIMPLE, policy, raw_stream
from tests.helpers import scrape_metrics, sdk
from tests.scripted import Script, unused_port


async def test_failover_before_the_first_byte_counts_only_the_answer(two_tiers) -> None:
    edge, _, gateway = await two_tiers()
    edge.script = Script(behaviour="status", status=500)
    async with sdk(gateway) as client:
        completion = await client.chat.completions.create(model="auto", messages=SIMPLE)
        stream = await client.chat.completions.create(
            model="auto", messages=SIMPLE, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
    assert completion.model == "cloud-model"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    assert {c.model for c in chunks} == {"cloud-model"}
    metrics = await scrape_metrics(gateway)
    requests = "gateway_requests_total"
    assert metrics.get(requests, tier="cloud", outcome="ok") == 2
    assert metrics.get(requests, tier="edge", outcome="ok") == 0
    assert metrics.get(requests, tier="edge", outcome="error") == 0
    tokens = "gateway_tokens_total"
    assert metrics.get(tokens, tier="cloud", direction="completion") == 10
    assert metrics.get(tokens, tier="edge", direction="completion") == 0
    assert metrics.get(tokens, tier="edge", direction="prompt") == 0
    attempts = "gateway_upstream_attempts_total"
    # The first request tried edge-1 twice (a retry) and opened its circuit; the second
    # request went straight to the cloud.
    assert metrics.get(attempts, tier="edge", node="edge-1", result="status_5xx") == 2
    assert metrics.get(attempts, tier="cloud", node="cloud-1", result="ok") == 2


async def test_a_continued_answer_counts_once_with_each_tiers_tokens(two_tiers) -> None:
    edge, cloud, gateway = await two_tiers()
    edge.script = Script(behaviour="cut", cut_after=2)
    cloud.script = Script(chunks=(" the", " upstream", "."))
    out = await raw_stream(gateway, {"messages": SIMPLE})
    assert out.done
    metrics = await scrape_metrics(gateway)
    assert metrics.get("gateway_requests_total", tier="cloud", outcome="ok") == 1
    assert metrics.get("gateway_requests_total", tier="edge", outcome="ok") == 0
    # Each tier is credited with the tokens it spent on the answer (the edge's estimated).
    assert metrics.get("gateway_tokens_total", tier="edge", direction="completion") == 2
    assert metrics.get("gateway_tokens_total", tier="cloud", direction="completion") == 3
    assert (
        metrics.get(
            "gateway_continuations_total",
            from_tier="edge",
            to_tier="cloud",
            form="prefill",
            result="ok",
        )
        == 1
    )
    assert (
        metrics.get(
            "gateway_upstream_attempts_total",
            tier="edge",
            node="edge-1",
            result="stream_cut",
        )
        == 1
    )


async def test_a_broken_answer_is_an_error_not_a_completion(upstreams, make_gateway) -> None:
    edge = await upstreams("edge-model")
    edge.script = Script(behaviour="cut", cut_after=2)
    gateway = await make_gateway(
        policy([(edge.url, "edge-model")], [(f"http://127.0.0.1:{unused_port()}", "c")]),
        health_checks=False,
    )
    out = await raw_stream(gateway, {"messages": SIMPLE, "stream_options": {"include_usage": True}})
    assert out.errors and not out.done
    metrics = await scrape_metrics(gateway)
    assert metrics.get("gateway_requests_total", tier="edge", outcome="ok") == 0
    assert metrics.get("gateway_requests_total", tier="edge", outcome="stream_truncated") == 1
    assert metrics.get("gateway_tokens_total", tier="edge", direction="completion") == 0
