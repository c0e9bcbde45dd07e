"""Node choice: least busy by vLLM's own load signals, sticky per session."""

from __future__ import annotations

from gateway.policy.parse import parse_policy
from gateway.state import POOL
from gateway.upstream.pool import NodePool
from tests.helpers import eventually, policy_yaml, sdk


def vllm_metrics(waiting: float, running: float, kv: float) -> str:
    return (
        "# HELP vllm:num_requests_waiting Number of requests waiting.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{engine="0",model_name="m"}} {waiting}\n'
        f'vllm:num_requests_running{{engine="0",model_name="m"}} {running}\n'
        f'vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} {kv}\n'
    )


HARD = [{"role": "user", "content": "Prove step by step that the integral of 2x is x^2 = C"}]


async def test_cloud_requests_prefer_the_replica_vllm_reports_less_loaded(upstreams, make_gateway):
    busy, idle = await upstreams("cloud-model"), await upstreams("cloud-model")
    busy.metrics_text = vllm_metrics(waiting=6, running=16, kv=0.9)
    idle.metrics_text = vllm_metrics(waiting=0, running=1, kv=0.1)
    gateway = await make_gateway(
        policy_yaml(
            [],
            [(busy.url, "cloud-model"), (idle.url, "cloud-model")],
            health={"load_interval_s": 0.1},
        )
    )
    pool = gateway.app[POOL]
    await eventually(lambda: all(n.load_score > 0 for n in pool.nodes("cloud")), what="loads read")
    async with sdk(gateway) as c:
        for _ in range(6):
            await c.chat.completions.create(model="cloud", messages=HARD)
    assert (busy.calls, idle.calls) == (0, 6)

    # The load flips: new requests follow it within a polling interval or two.
    busy.metrics_text = vllm_metrics(waiting=0, running=0, kv=0.0)
    idle.metrics_text = vllm_metrics(waiting=9, running=20, kv=0.95)
    first, second = pool.nodes("cloud")
    await eventually(lambda: first.load_score < second.load_score, 1.0, "the flip read")
    async with sdk(gateway) as c:
        for _ in range(4):
            await c.chat.completions.create(model="cloud", messages=HARD)
    assert busy.calls == 4


def _pool(count: int) -> NodePool:
    nodes = [(f"http://127.0.0.1:{9000 + i}", "m") for i in range(count)]
    return NodePool(parse_policy(policy_yaml([], nodes)))


def test_a_session_sticks_to_one_replica_while_it_is_not_overloaded() -> None:
    pool = _pool(4)
    homes = {}
    for session in ("alice", "bob", "carol", "dave", "erin", "frank"):
        picks = set()
        for _ in range(5):
            lease = pool.acquire("cloud", session_key=session)
            assert lease is not None
            picks.add(lease.node.name)
            lease.release()
        assert len(picks) == 1, f"{session} moved between replicas: {picks}"
        homes[session] = picks.pop()
    assert len(set(homes.values())) > 1  # sessions spread over replicas


def test_a_session_leaves_its_replica_when_it_is_much_busier() -> None:
    pool = _pool(2)
    lease = pool.acquire("cloud", session_key="alice")
    assert lease is not None
    home = lease.node
    lease.release()
    home.load_score = 0.9  # e.g. a deep vLLM queue
    lease = pool.acquire("cloud", session_key="alice")
    assert lease is not None and lease.node is not home


def test_without_a_session_the_least_busy_node_wins() -> None:
    pool = _pool(3)
    leases = [pool.acquire("cloud") for _ in range(3)]
    assert sorted(lease.node.name for lease in leases if lease) == ["cloud-1", "cloud-2", "cloud-3"]


def test_a_full_node_is_skipped_and_all_full_means_none() -> None:
    pool = NodePool(
        parse_policy(
            "version: 1\ntiers:\n  cloud:\n    nodes:\n"
            "      - {url: 'http://a', model: m, name: a, max_concurrency: 1}\n"
            "      - {url: 'http://b', model: m, name: b, max_concurrency: 1}\n"
        )
    )
    first, second = pool.acquire("cloud"), pool.acquire("cloud")
    assert first and second and {first.node.name, second.node.name} == {"a", "b"}
    assert pool.acquire("cloud") is None
    first.release()
    first.release()  # releasing twice must not free a second slot
    third = pool.acquire("cloud")
    assert third is not None and third.node is first.node
    assert pool.acquire("cloud") is None
