"""Active health checks: each node's ``/health`` (or ``/v1/models``) on an interval."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from gateway.policy.model import HealthSpec
from gateway.upstream.pool import Node, NodePool

log = logging.getLogger("gateway.health")

CHECKS_TO_MARK_DOWN = 2
"""Consecutive failed checks before a node that was up is taken out of rotation."""


async def check_node(session: aiohttp.ClientSession, node: Node, timeout_s: float) -> bool:
    """True when the node says it is ready. A node without ``/health`` is asked for its models."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with session.get(node.spec.url + "/health", timeout=timeout) as response:
            await response.read()
            if response.status == 404:
                async with session.get(node.spec.url + "/v1/models", timeout=timeout) as models:
                    await models.read()
                    return models.status == 200
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.debug("health check of %s failed: %r", node.name, exc)
        return False


async def check_all(session: aiohttp.ClientSession, pool: NodePool, timeout_s: float) -> None:
    nodes = list(pool.all_nodes())
    results = await asyncio.gather(*(check_node(session, n, timeout_s) for n in nodes))
    for node, passed in zip(nodes, results, strict=True):
        node.failed_checks = 0 if passed else node.failed_checks + 1
        # One lost probe (a GC pause, a busy loop) is not an outage: it takes two in a row.
        healthy = passed or (node.healthy is True and node.failed_checks < CHECKS_TO_MARK_DOWN)
        if node.healthy is not healthy:
            log.info("%s node %s is %s", node.tier, node.name, "up" if healthy else "DOWN")
        node.healthy = healthy


async def run_health_checks(
    session: aiohttp.ClientSession,
    pool: NodePool,
    health: Callable[[], HealthSpec],
    after_round: Callable[[], None] | None = None,
) -> None:
    """Check every node, then sleep the policy's interval; runs until cancelled."""
    while True:
        spec = health()
        await check_all(session, pool, spec.timeout_s)
        if after_round is not None:
            after_round()
        await asyncio.sleep(spec.interval_s)
