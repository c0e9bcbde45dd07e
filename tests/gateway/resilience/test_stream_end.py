"""How a stream ends: a complete answer without ``[DONE]`` finishes at once with its usage;
the gateway does not sit out the idle deadline waiting for a marker."""

from __future__ import annotations

import time

import pytest

from gateway.upstream.client import DRAIN_S
from tests.gateway.resilience.conftest import SIMPLE, TEXT, raw_stream
from tests.helpers import eventually, sdk
from tests.scripted import Script

SLOW_IDLE = "{connect: 1, first_token: 3, idle: 3, total: 20}"


@pytest.mark.parametrize("behaviour", ["no_done", "no_done_hold"])
async def test_a_complete_stream_without_done_finishes_promptly_with_usage(
    two_tiers, behaviour
) -> None:
    edge, cloud, gateway = await two_tiers(timeouts=SLOW_IDLE)
    # no_done closes the body after the usage chunk; no_done_hold keeps it open.
    edge.script = Script(behaviour=behaviour)
    started = time.monotonic()
    out = await raw_stream(gateway, {"messages": SIMPLE, "stream_options": {"include_usage": True}})
    assert time.monotonic() - started < 1.5  # well inside the 3 s idle deadline
    assert out.text == TEXT and out.done and out.errors == []
    assert out.chunks[-1]["usage"]["completion_tokens"] == 5
    assert (edge.calls, cloud.calls) == (1, 0)
    if behaviour == "no_done_hold":
        # Not left hanging either: the upstream would hold the connection for an hour.
        await eventually(
            lambda: edge.seen[0].disconnected_at is not None, 1.0, "the upstream closed"
        )


async def test_a_complete_non_streaming_answer_without_done_is_prompt(two_tiers) -> None:
    edge, _, gateway = await two_tiers(timeouts=SLOW_IDLE)
    edge.script = Script(behaviour="no_done_hold")
    started = time.monotonic()
    async with sdk(gateway) as client:
        completion = await client.chat.completions.create(model="auto", messages=SIMPLE)
    assert time.monotonic() - started < 1.5
    assert completion.choices[0].message.content == TEXT
    assert completion.usage is not None and completion.usage.completion_tokens == 5


@pytest.mark.parametrize("done_delay_s", [0.05, 1.0])
async def test_a_finished_answer_keeps_its_connection_unless_the_node_holds_the_body(
    two_tiers, done_delay_s
) -> None:
    """The answer is sent at its usage; the node's [DONE] and end of body may come later.
    Within DRAIN_S (0.25 s) the connection goes back to the pool and the next request
    reuses it; a body held open longer costs the connection."""
    edge, _, gateway = await two_tiers(timeouts=SLOW_IDLE)
    edge.script = Script(done_delay_s=done_delay_s)
    async with sdk(gateway) as client:
        first = await client.chat.completions.create(model="auto", messages=SIMPLE)
        assert first.choices[0].message.content == TEXT
        if done_delay_s < DRAIN_S:
            await eventually(lambda: edge.in_flight == 0, 2.0, "the node sent the whole body")
        else:
            await eventually(
                lambda: edge.seen[0].disconnected_at is not None, 2.0, "the gateway hung up"
            )
        second = await client.chat.completions.create(model="auto", messages=SIMPLE)
        assert second.choices[0].message.content == TEXT
    reused = edge.seen[1].peer == edge.seen[0].peer
    assert reused == (done_delay_s < DRAIN_S)
    assert (edge.seen[0].disconnected_at is None) == (done_delay_s < DRAIN_S)


async def test_usage_is_hidden_from_a_client_that_did_not_ask(two_tiers) -> None:
    edge, _, gateway = await two_tiers()
    edge.script = Script(behaviour="no_done")
    out = await raw_stream(gateway, {"messages": SIMPLE})
    assert out.text == TEXT and out.done
    assert all("usage" not in chunk for chunk in out.chunks)
    assert edge.seen[0].body["stream_options"] == {"include_usage": True}  # asked anyway
