"""Hot reload: a valid file swaps atomically, an invalid one is rejected and the old stays."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp

from gateway.app import _log_if_failed
from gateway.routing.state import PolicyHolder, RoutingState, load_routing_state
from gateway.state import POLICIES, POOL
from tests.helpers import eventually, policy_yaml, scrape_metrics

SIMPLE = [{"role": "user", "content": "hi"}]


async def _tier_of(gateway) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + "/v1/chat/completions", json={"model": "auto", "messages": SIMPLE}
        ) as response,
    ):
        assert response.status == 200
        return response.headers["x-gateway-tier"]


async def _reloads(gateway) -> dict[str, float]:
    metrics = await scrape_metrics(gateway)
    return {s.labels["result"]: s.value for s in metrics.samples("gateway_policy_reloads_total")}


async def test_file_change_reloads_and_bad_file_keeps_running_policy(two_tiers, caplog):
    edge, cloud, gateway = await two_tiers(cloud_above=0.9)
    nodes = ([(edge.url, "edge-model")], [(cloud.url, "cloud-model")])
    holder = gateway.app[POLICIES]
    assert await _tier_of(gateway) == "edge"

    # Everything to the cloud: threshold 0 sends any score above it there.
    before = holder.current
    gateway.policy_path.write_text(policy_yaml(*nodes, cloud_above=0.0))
    await eventually(lambda: holder.current is not before)
    assert await _tier_of(gateway) == "cloud"

    # A broken file: rejected with key and line, the running policy stays.
    running = holder.current
    gateway.policy_path.write_text(policy_yaml(*nodes, cloud_above=0.0) + "routing_typo: 1\n")
    await eventually(lambda: holder.last_error is not None)
    assert holder.current is running
    assert "routing_typo" in holder.last_error and ":" in holder.last_error
    assert await _tier_of(gateway) == "cloud"
    assert "keeping the running policy" in caplog.text
    assert await _reloads(gateway) == {"success": 1.0, "failure": 1.0}


async def test_sighup_reloads(two_tiers):
    edge, cloud, gateway = await two_tiers(cloud_above=0.9)
    nodes = ([(edge.url, "edge-model")], [(cloud.url, "cloud-model")])
    holder = gateway.app[POLICIES]
    # Stop the file watcher from seeing the change first: only SIGHUP may reload here.
    holder._mtime = None
    text = policy_yaml(*nodes, cloud_above=0.0)
    gateway.policy_path.write_text(text)
    holder._mtime = (gateway.policy_path.stat().st_mtime_ns, gateway.policy_path.stat().st_size)
    before = holder.current
    os.kill(os.getpid(), signal.SIGHUP)
    await eventually(lambda: holder.current is not before)
    assert holder.current.policy.routing.cloud_above == 0.0


async def test_reload_keeps_node_state_for_unchanged_nodes(upstreams, two_tiers):
    edge, cloud, gateway = await two_tiers()
    pool = gateway.app[POOL]
    node = pool.nodes("edge")[0]
    node.breaker.record_failure()
    node.breaker.record_failure()  # open
    extra = await upstreams("edge-model")
    gateway.policy_path.write_text(
        policy_yaml(
            [(edge.url, "edge-model"), (extra.url, "edge-model")], [(cloud.url, "cloud-model")]
        )
    )
    await eventually(lambda: len(pool.nodes("edge")) == 2)
    assert pool.nodes("edge")[0] is node
    assert not node.breaker.available()


def _holder(path, **kwargs) -> PolicyHolder:
    return PolicyHolder(path, load_routing_state(path), **kwargs)


async def test_an_error_in_the_watch_loop_is_logged_counted_and_survived(tmp_path, caplog):
    path = tmp_path / "policy.yaml"
    path.write_text(policy_yaml([], [], cloud_above=0.9))
    results: list[bool] = []

    def on_result(ok: bool) -> None:
        results.append(ok)
        if len(results) == 1:
            raise RuntimeError("metrics backend fell over")  # escapes reload() into the loop

    holder = _holder(path, on_result=on_result)
    watcher = asyncio.create_task(holder.watch(0.02))
    try:
        path.write_text("version: 1\ntiers: [\n")
        await eventually(lambda: len(results) == 2)
        assert results == [False, False]  # the reload's failure, then the loop's own
        assert not watcher.done()
        assert "policy watcher error: RuntimeError('metrics backend fell over')" in (
            holder.last_error or ""
        )
        loop_errors = [r for r in caplog.records if "policy watcher error" in r.getMessage()]
        assert loop_errors and loop_errors[0].exc_info is not None  # logged with its traceback

        path.write_text(policy_yaml([], [], cloud_above=0.0))
        await eventually(lambda: holder.current.policy.routing.cloud_above == 0.0)
        assert results == [False, False, True] and holder.last_error is None
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def test_an_error_while_adopting_keeps_the_running_policy(tmp_path, caplog):
    path = tmp_path / "policy.yaml"
    path.write_text(policy_yaml([], [], cloud_above=0.9))
    adopted: list[float] = []

    def on_change(state: RoutingState) -> None:
        if not adopted:
            adopted.append(-1.0)
            raise ValueError("the pool refused it")
        adopted.append(state.policy.routing.cloud_above)

    results: list[bool] = []
    holder = _holder(path, on_change=on_change, on_result=results.append)
    running = holder.current
    path.write_text(policy_yaml([], [], cloud_above=0.0))
    assert await holder.reload() is False
    assert holder.current is running
    assert holder.last_error == f"{path}: cannot adopt: ValueError('the pool refused it')"
    assert "Traceback" in caplog.text and "keeping the running one" in caplog.text
    assert await holder.reload() is True
    assert holder.current.policy.routing.cloud_above == 0.0
    assert results == [False, True] and adopted == [-1.0, 0.0]


async def test_a_reload_past_its_time_bound_is_a_failure_and_frees_the_lock(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(policy_yaml([], [], cloud_above=0.9))
    results: list[bool] = []
    holder = _holder(path, on_result=results.append, reload_timeout_s=0.0)
    running = holder.current
    path.write_text(policy_yaml([], [], cloud_above=0.0))
    assert await holder.reload() is False
    assert holder.last_error == f"{path}: reading took longer than 0 s"
    assert holder.current is running and results == [False]
    assert not holder._lock.locked()


async def test_a_reload_task_that_dies_anyway_is_logged(caplog):
    async def dies() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(dies())
    await asyncio.gather(task, return_exceptions=True)
    _log_if_failed(task)
    record = next(r for r in caplog.records if "policy reload task ended" in r.getMessage())
    assert record.levelname == "ERROR" and record.exc_info is not None
