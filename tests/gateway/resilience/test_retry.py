"""Faults before the first byte that may deserve a second try on the same node: 429, 500,
a reset connection; and the ones that never do (503). Each test asserts what the client
got, how many attempts each upstream saw, and how far apart they were."""

from __future__ import annotations

import email.utils
import itertools
import time

import aiohttp
import pytest

from gateway.errors import (
    UpstreamConnectError,
    UpstreamConnectionReset,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamStatusError,
    UpstreamTimeout,
)
from gateway.policy.fallback import FallbackSpec
from gateway.state import FORWARDER
from gateway.upstream.retry import backoff_s, parse_retry_after, same_node_delay
from tests.gateway.resilience.conftest import SIMPLE, TEXT, policy
from tests.helpers import chat, sdk
from tests.scripted import Script

# -- the rules, as a table -----------------------------------------------------------------


def test_parse_retry_after_reads_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(date, now=now) == pytest.approx(30.0, abs=1.0)
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0
    assert parse_retry_after("-5") == 0.0
    for unreadable in (None, "", "soon", "nan", "inf", "Tue, 99 Foo 2024"):
        assert parse_retry_after(unreadable) is None, unreadable


@pytest.mark.parametrize("retry", [0, 1, 2, 3, 6])
def test_backoff_waits_at_least_half_the_nominal_delay_and_is_capped(retry: int) -> None:
    nominal = min(2.0, 0.2 * 2**retry)
    low = backoff_s(retry, base_s=0.2, max_s=2.0, jitter=lambda: 0.0)
    high = backoff_s(retry, base_s=0.2, max_s=2.0, jitter=lambda: 0.999999)
    assert low == pytest.approx(nominal / 2)
    assert high == pytest.approx(nominal, rel=1e-3)


SPEC = FallbackSpec()  # defaults: same_node_retries 1, rate_limited_retries 2, max wait 5 s


@pytest.mark.parametrize(
    ("exc", "retries_done", "remaining_s", "expected"),
    [
        (UpstreamRateLimited("429", retry_after_s=1.0), 0, 60.0, 1.0),
        (UpstreamRateLimited("429", retry_after_s=1.0), 2, 60.0, None),  # out of retries
        (UpstreamRateLimited("429", retry_after_s=30.0), 0, 60.0, None),  # over max wait
        (UpstreamRateLimited("429", retry_after_s=2.0), 0, 2.5, None),  # over the budget
        (UpstreamRateLimited("429"), 0, 60.0, 0.1),  # backoff: base 0.2, no jitter
        (UpstreamRateLimited("429"), 1, 60.0, 0.2),
        (UpstreamStatusError("500", upstream_status=500), 0, 60.0, 0.1),
        (UpstreamStatusError("500", upstream_status=500), 1, 60.0, None),
        (UpstreamStatusError("404", upstream_status=404), 0, 60.0, None),  # misconfiguration
        (UpstreamConnectionReset("reset"), 0, 60.0, 0.1),
        (UpstreamConnectError("refused"), 0, 60.0, None),  # nothing listens: move on
        (UpstreamOverloaded("503", retry_after_s=1.0), 0, 60.0, None),  # saturated: move on
        (UpstreamTimeout("silent"), 0, 60.0, None),  # never ask a silent node again
    ],
)
def test_same_node_delay(exc, retries_done, remaining_s, expected) -> None:
    delay = same_node_delay(
        exc, retries_done=retries_done, spec=SPEC, remaining_s=remaining_s, jitter=lambda: 0.0
    )
    assert delay == (pytest.approx(expected) if expected is not None else None)


# -- over HTTP -----------------------------------------------------------------------------


def gaps(seen) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(seen)]


@pytest.mark.parametrize("stream", [False, True])
async def test_429_with_retry_after_waits_then_retries_the_same_node(two_tiers, stream) -> None:
    edge, cloud, gateway = await two_tiers()
    edge.queue = [Script(behaviour="status", status=429, retry_after="1")]
    raw = await chat(gateway, stream=stream)
    assert raw.text == TEXT
    assert raw.headers["x-gateway-node"] == "edge-1"
    assert (edge.calls, cloud.calls) == (2, 0)
    # Honoured: not sooner than asked, and not much later (at most +10 % spread + slack).
    assert 1.0 <= gaps(edge.seen)[0] < 1.6


async def test_429_with_a_retry_after_beyond_the_budget_fails_over_at_once(two_tiers) -> None:
    edge, cloud, gateway = await two_tiers(fallback={"max_retry_wait_s": 2})
    edge.script = Script(behaviour="status", status=429, retry_after="30")
    started = time.monotonic()
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=SIMPLE)
    assert time.monotonic() - started < 1.5
    assert raw.headers["x-gateway-tier"] == "cloud"
    assert raw.headers["x-gateway-fallback"] == "edge-1:overloaded"
    assert (edge.calls, cloud.calls) == (1, 1)


async def test_429_without_retry_after_backs_off_a_bounded_number_of_times(two_tiers) -> None:
    edge, cloud, gateway = await two_tiers(
        fallback={"rate_limited_retries": 2, "backoff_s": {"base": 0.2, "max": 2}}
    )
    edge.script = Script(behaviour="status", status=429)
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=SIMPLE)
    assert raw.headers["x-gateway-tier"] == "cloud"
    assert (edge.calls, cloud.calls) == (3, 1)  # one try and two retries, then failover
    first, second = gaps(edge.seen)
    # Exponential with jitter: retry n waits between half and all of 0.2 * 2**n seconds.
    assert 0.1 <= first < 0.2 + 0.5
    assert 0.2 <= second < 0.4 + 0.5
    assert cloud.seen[0].at - edge.seen[-1].at < 0.5  # the last 429 moved on at once


async def test_429_everywhere_answers_503_with_the_upstreams_retry_after(two_tiers) -> None:
    edge, cloud, gateway = await two_tiers()
    edge.script = cloud.script = Script(behaviour="status", status=429, retry_after="30")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + "/v1/chat/completions", json={"model": "auto", "messages": SIMPLE}
        ) as response,
    ):
        body = await response.json()
        assert response.status == 503
        assert response.headers["Retry-After"] == "30"
    assert body["error"]["code"] == "no_healthy_upstream"
    assert (edge.calls, cloud.calls) == (1, 1)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_single_500_is_retried_once_on_the_same_node(two_tiers, stream) -> None:
    edge, cloud, gateway = await two_tiers()
    edge.queue = [Script(behaviour="status", status=500)]
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=SIMPLE, stream=stream
        )
        if stream:
            [c async for c in raw.parse()]
    assert raw.headers["x-gateway-node"] == "edge-1"
    assert (edge.calls, cloud.calls) == (2, 0)
    assert 0.1 <= gaps(edge.seen)[0] < 0.7  # backoff base 0.2: waits 0.1-0.2 s


async def test_persistent_5xx_fails_over_after_one_retry(two_tiers) -> None:
    edge, cloud, gateway = await two_tiers()
    edge.script = Script(behaviour="status", status=502)
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=SIMPLE)
    assert raw.parse().choices[0].message.content == TEXT
    assert raw.headers["x-gateway-tier"] == "cloud"
    assert raw.headers["x-gateway-fallback"] == "edge-1:status_5xx, edge-1:status_5xx"
    assert (edge.calls, cloud.calls) == (2, 1)


async def test_503_is_not_retried_on_the_same_node(two_tiers) -> None:
    edge, cloud, gateway = await two_tiers()
    edge.script = Script(behaviour="status", status=503, retry_after="1")
    started = time.monotonic()
    async with sdk(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(model="auto", messages=SIMPLE)
    assert time.monotonic() - started < 1.0
    assert raw.headers["x-gateway-tier"] == "cloud"
    assert (edge.calls, cloud.calls) == (1, 1)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_connection_reset_before_the_headers_is_retried_then_failed_over(
    upstreams, make_gateway, stream
) -> None:
    once, always, cloud = (
        await upstreams("edge-model"),
        await upstreams("edge-model"),
        await upstreams("cloud-model"),
    )
    once.queue = [Script(behaviour="reset")]
    always.script = Script(behaviour="reset")
    # Two gateways, one node each: a single reset (retried) and a persistent one.
    for edge, expected in ((once, (2, 0)), (always, (2, 1))):
        cloud.seen.clear()
        gateway = await make_gateway(
            policy([(edge.url, "edge-model")], [(cloud.url, "cloud-model")]), health_checks=False
        )
        raw = await chat(gateway, stream=stream)
        assert raw.text == TEXT
        assert (edge.calls, cloud.calls) == expected
        assert gaps(edge.seen)[0] >= 0.1


async def test_max_attempts_bounds_retries_and_failovers_together(upstreams, make_gateway) -> None:
    e1, e2, cloud = (
        await upstreams("edge-model"),
        await upstreams("edge-model"),
        await upstreams("cloud-model"),
    )
    for upstream in (e1, e2, cloud):
        upstream.script = Script(behaviour="status", status=500)
    gateway = await make_gateway(
        policy(
            [(e1.url, "edge-model"), (e2.url, "edge-model")],
            [(cloud.url, "cloud-model")],
            fallback={"max_attempts": 3},
        ),
        health_checks=False,
    )
    gateway.app[FORWARDER].jitter = lambda: 0.0
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + "/v1/chat/completions", json={"model": "auto", "messages": SIMPLE}
        ) as response,
    ):
        body = await response.json()
        assert response.status == 503
    assert body["error"]["code"] == "no_healthy_upstream"
    assert e1.calls + e2.calls + cloud.calls == 3
    assert (e1.calls, e2.calls, cloud.calls) == (2, 1, 0)
