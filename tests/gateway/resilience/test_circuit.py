"""A flapping node: its circuit opens, the other node takes the traffic, half-open probes
test it no more often than ``open_s``, and traffic comes back within seconds of recovery."""

from __future__ import annotations

import asyncio
import itertools
import time

from gateway.state import POOL
from gateway.upstream.circuit import CircuitState
from tests.gateway.resilience.conftest import SIMPLE, policy
from tests.helpers import sdk
from tests.scripted import Script

OPEN_S = 0.5
HEALTH = {"interval_s": 5, "timeout_s": 2, "failure_threshold": 2, "open_s": OPEN_S}


async def test_a_flapping_node_is_isolated_probed_and_brought_back(upstreams, make_gateway) -> None:
    flappy, steady, cloud = (
        await upstreams("edge-model"),
        await upstreams("edge-model"),
        await upstreams("cloud-model"),
    )
    flappy.script = Script(behaviour="status", status=500)
    gateway = await make_gateway(
        policy(
            [(flappy.url, "edge-model"), (steady.url, "edge-model")],
            [(cloud.url, "cloud-model")],
            health=HEALTH,
        ),
        health_checks=False,
    )
    node = gateway.app[POOL].nodes("edge")[0]
    served: list[tuple[float, str]] = []
    recovered_at: float | None = None
    started = time.monotonic()
    async with sdk(gateway) as client:
        while time.monotonic() - started < 4.0:
            now = time.monotonic() - started
            if recovered_at is None and now >= 2.0:
                flappy.script = Script()  # back to health
                recovered_at = time.monotonic()
            raw = await client.chat.completions.with_raw_response.create(
                model="auto", messages=SIMPLE
            )
            served.append((time.monotonic(), raw.headers["x-gateway-node"]))
            await asyncio.sleep(0.05)
    assert recovered_at is not None
    # Every request got an answer; while the node failed, the steady node gave it.
    assert all(name in ("edge-1", "edge-2") for _, name in served)
    assert [name for at, name in served if at < recovered_at].count("edge-1") == 0
    # While failing, the node saw probes, not traffic: the first request (a try and a
    # retry, which opened the circuit), then one probe per open period at most.
    failing = [s.at for s in flappy.seen if s.at < recovered_at]
    probes = failing[2:]
    assert 1 <= len(probes) <= 2.0 / OPEN_S + 1
    assert all(b - a >= OPEN_S * 0.9 for a, b in itertools.pairwise(probes))
    # After recovery the next probe succeeds and closes the circuit: back within open_s.
    back = next(at for at, name in served if at >= recovered_at and name == "edge-1")
    assert back - recovered_at < OPEN_S + 0.5
    assert node.breaker.state is CircuitState.CLOSED
    assert cloud.calls == 0  # the tier had capacity all along
