"""How a stream ends: a complete answer without ``[DONE]`` finishes at once with its usage;
the gateway does not sit out the idle deadline waiting for a marker."""

from __future__ import annotations

import time

import pytest

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


async def test_usage_is_hidden_from_a_client_that_did_not_ask(two_tiers) -> None:
    edge, _, gateway = await two_tiers()
    edge.script = Script(behaviour="no_done")
    out = await raw_stream(gateway, {"messages": SIMPLE})
    assert out.text == TEXT and out.done
    assert all("usage" not in chunk for chunk in out.chunks)
    assert edge.seen[0].body["stream_options"] == {"include_usage": True}  # asked anyway
