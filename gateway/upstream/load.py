"""Load polling: each node's own ``/metrics`` (vLLM's queue and KV cache) on a short interval.

Nodes whose metrics page is not vLLM's (the edge node, a generic OpenAI server) keep a
load score of 0 and are balanced by the gateway's own in-flight count alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from gateway.upstream.pool import Node, NodePool
from gateway.upstream.vllm_load import load_score, parse_vllm_metrics

log = logging.getLogger("gateway.load")


async def poll_node_load(session: aiohttp.ClientSession, node: Node, timeout_s: float) -> None:
    """Update ``node.load_score``; on any failure leave it as it was (health checks judge)."""
    try:
        async with session.get(
            node.spec.url + "/metrics", timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            if response.status != 200:
                node.load_score = 0.0
                return
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
        return
    try:
        load = parse_vllm_metrics(text)
    except ValueError:
        node.load_score = 0.0  # not a vLLM node
        return
    # In units of the node's concurrency limit, like the in-flight share it is added to.
    node.load_score = load_score(load) / node.spec.max_concurrency


async def run_load_polling(
    session: aiohttp.ClientSession,
    pool: NodePool,
    interval_s: Callable[[], float],
    timeout_s: Callable[[], float],
) -> None:
    """Poll every healthy node's load; runs until cancelled."""
    while True:
        nodes = [n for n in pool.all_nodes() if n.healthy is not False]
        await asyncio.gather(*(poll_node_load(session, n, timeout_s()) for n in nodes))
        await asyncio.sleep(interval_s())
