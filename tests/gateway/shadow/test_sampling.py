"""The shadow sample (a hash of the request id) and the cloud's room for a shadow call."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from gateway.policy.parse import parse_policy
from gateway.shadow.sampling import cloud_room, sample_point, sampled
from gateway.upstream.pool import Node, NodePool

IDS = [f"req-{i}" for i in range(20_000)]


def test_the_same_id_is_always_in_or_always_out() -> None:
    first = [sampled(i, 0.1) for i in IDS[:500]]
    assert first == [sampled(i, 0.1) for i in IDS[:500]]
    assert sample_point("req-7") == sample_point("req-7")


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.3, 0.5, 0.9])
def test_the_share_sampled_is_the_rate(rate: float) -> None:
    n = len(IDS)
    taken = sum(sampled(i, rate) for i in IDS)
    # Within 4.5 standard deviations of a binomial draw: fails by chance about 1 in 150,000
    # runs, and the ids are fixed, so it either always passes or always fails.
    assert abs(taken - rate * n) <= 4.5 * math.sqrt(n * rate * (1 - rate))


def test_samples_nest_a_larger_rate_keeps_every_id_of_a_smaller_one() -> None:
    small = {i for i in IDS if sampled(i, 0.05)}
    large = {i for i in IDS if sampled(i, 0.2)}
    assert small <= large and len(small) < len(large)


def test_rate_zero_takes_none_and_rate_one_takes_all() -> None:
    assert not any(sampled(i, 0.0) for i in IDS)
    assert all(sampled(i, 1.0) for i in IDS)


def test_any_text_is_an_id() -> None:
    for odd in ["", "é", "\udcff", "x" * 10_000]:
        assert 0.0 <= sample_point(odd) <= 1.0


POLICY = """version: 1
tiers:
  edge:
    nodes: [{url: "http://127.0.0.1:1", model: e}]
  cloud:
    supports: [tools]
    nodes:
      - {url: "http://127.0.0.1:2", model: c, name: cloud-1, max_concurrency: 4}
      - {url: "http://127.0.0.1:3", model: c, name: cloud-2, max_concurrency: 4}
"""


def _busy(count: int) -> Callable[[Node], None]:
    def set_(node: Node) -> None:
        node.in_flight = count

    return set_


def _unhealthy(node: Node) -> None:
    node.healthy = False


def _open(node: Node) -> None:
    for _ in range(node.breaker.failure_threshold):
        node.breaker.record_failure()


def _loaded(node: Node) -> None:
    node.load_score = 0.9  # vLLM's queue and KV cache say busy, whatever the in-flight count


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (None, None, None),
        (_busy(1), None, None),  # the other node is idle
        (_busy(2), _busy(2), None),  # 0.5 is not above 0.5
        (_busy(3), _busy(3), "cloud_busy"),  # 0.75 each
        (_busy(4), _busy(4), "cloud_busy"),  # both full
        (_busy(4), _unhealthy, "cloud_busy"),  # the one usable node is full
        (_loaded, _busy(3), "cloud_busy"),
        (_unhealthy, None, None),
        (_unhealthy, _unhealthy, "cloud_unavailable"),
        (_open, _unhealthy, "cloud_unavailable"),
        (_open, _busy(1), None),
    ],
)
def test_cloud_room(
    first: Callable[[Node], None] | None,
    second: Callable[[Node], None] | None,
    expected: str | None,
) -> None:
    pool = NodePool(parse_policy(POLICY))
    nodes = pool.nodes("cloud")
    for change, node in zip((first, second), nodes, strict=True):
        if change is not None:
            change(node)
    assert cloud_room(nodes, needs=frozenset(), busy_above=0.5) == expected


def test_no_room_where_no_node_serves_what_the_request_needs() -> None:
    nodes = NodePool(parse_policy(POLICY)).nodes("cloud")
    assert cloud_room(nodes, needs=frozenset({"tool_choice_auto"}), busy_above=0.5) is None
    assert cloud_room(nodes, needs=frozenset({"images"}), busy_above=0.5) == "cloud_unavailable"
    assert cloud_room([], needs=frozenset(), busy_above=0.5) == "cloud_unavailable"
