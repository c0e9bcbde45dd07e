"""Nodes of both tiers with their live state, and the choice of node for a request."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from gateway.policy.capabilities import Capability
from gateway.policy.model import HealthSpec, NodeSpec, Policy
from gateway.upstream.circuit import CircuitBreaker, CircuitState
from hybrid_common.protocol import TIERS, Tier

SkipReason = Literal["unhealthy", "circuit_open", "at_capacity", "no_nodes"]
"""Why a node (or a whole tier: ``no_nodes``) was passed over without being asked."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Skip:
    """A node, or with ``node`` None a whole tier, that could not take a request."""

    tier: Tier
    node: str | None
    reason: SkipReason


@dataclass(slots=True, kw_only=True)
class Node:
    """One upstream server and what the gateway knows about it right now."""

    spec: NodeSpec
    tier: Tier
    breaker: CircuitBreaker
    in_flight: int = 0
    healthy: bool | None = None
    """Verdict of the active health checks; None until the first one ran."""
    failed_checks: int = 0
    load_score: float = 0.0
    """From the node's own metrics (vLLM queue and KV cache); 0 when unknown."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def full(self) -> bool:
        return self.in_flight >= self.spec.max_concurrency

    def usable(self) -> bool:
        return self.healthy is not False and self.breaker.available()

    def skip_reason(self) -> SkipReason | None:
        """Why the node cannot take a request now; None when it can."""
        if self.healthy is False:
            return "unhealthy"
        if not self.breaker.available():
            return "circuit_open"
        if self.full:
            return "at_capacity"
        return None

    def busyness(self) -> float:
        return self.in_flight / self.spec.max_concurrency + self.load_score


@dataclass(slots=True)
class Lease:
    """A slot on a node, held for one attempt; release it exactly once."""

    node: Node
    _released: bool = field(default=False, init=False)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.node.in_flight -= 1


class NodePool:
    """All nodes, keyed by tier; survives policy reloads for nodes that did not change."""

    def __init__(self, policy: Policy) -> None:
        self._nodes: dict[Tier, list[Node]] = {tier: [] for tier in TIERS}
        self.sync(policy)

    def sync(self, policy: Policy) -> None:
        """Adopt the policy's node lists, keeping the state of nodes that stay."""
        old = {(n.tier, n.spec): n for n in self.all_nodes()}
        health = policy.health
        for tier in TIERS:
            nodes: list[Node] = []
            for spec in policy.tiers[tier].nodes:
                node = old.get((tier, spec))
                if node is None:
                    node = Node(spec=spec, tier=tier, breaker=_breaker(health))
                else:
                    node.breaker.failure_threshold = health.failure_threshold
                    node.breaker.open_s = health.open_s
                nodes.append(node)
            self._nodes[tier] = nodes

    def all_nodes(self) -> Iterator[Node]:
        for tier in TIERS:
            yield from self._nodes[tier]

    def nodes(self, tier: Tier) -> list[Node]:
        return self._nodes[tier]

    def ready(self) -> bool:
        return any(n.healthy and n.breaker.state is not CircuitState.OPEN for n in self.all_nodes())

    def acquire(
        self,
        tier: Tier,
        *,
        model: str | None = None,
        exclude: frozenset[str] = frozenset(),
        session_key: str | None = None,
        needs: frozenset[Capability] = frozenset(),
    ) -> Lease | None:
        """Claim a slot on the best node of ``tier`` that supports all of ``needs``; None
        when none can take the request.

        Best: the session's home node (rendezvous hash) while it is not busier than the
        others by much, so vLLM's prefix cache pays off; otherwise the least busy.
        """
        candidates = [
            n
            for n in self._nodes[tier]
            if n.name not in exclude
            and (model is None or n.spec.model == model)
            and needs <= n.spec.supports
            and n.usable()
            and not n.full
        ]
        if not candidates:
            return None
        candidates.sort(key=Node.busyness)
        if session_key is not None and len(candidates) > 1:
            home = max(candidates, key=lambda n: _rendezvous(session_key, n.name))
            if home.busyness() <= candidates[0].busyness() + STICKY_SLACK:
                candidates.remove(home)
                candidates.insert(0, home)
        for node in candidates:
            if node.breaker.try_acquire():
                node.in_flight += 1
                return Lease(node)
        return None

    def skips(
        self,
        tier: Tier,
        *,
        model: str | None = None,
        exclude: frozenset[str] = frozenset(),
        needs: frozenset[Capability] = frozenset(),
    ) -> list[Skip]:
        """Why :meth:`acquire` found no node of ``tier``: each node it could have asked
        (``model`` served, ``needs`` supported, not in ``exclude``) with its reason, in
        policy order; the tier itself as ``no_nodes`` when none of its nodes could ever
        serve the request (none configured, none with ``model`` or with ``needs``)."""
        serving = [
            n
            for n in self._nodes[tier]
            if (model is None or n.spec.model == model) and needs <= n.spec.supports
        ]
        if not serving:
            return [Skip(tier=tier, node=None, reason="no_nodes")]
        skips: list[Skip] = []
        for node in serving:
            reason = node.skip_reason()
            # No reason now: its circuit's open period ran out since acquire() looked.
            if node.name not in exclude and reason is not None:
                skips.append(Skip(tier=tier, node=node.name, reason=reason))
        return skips


STICKY_SLACK = 0.5
"""How much busier (in in-flight share plus load score) a session's home node may be
before its requests go elsewhere: cache locality is worth a little queueing, not a lot."""


def _breaker(health: HealthSpec) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=health.failure_threshold, open_s=health.open_s)


def _rendezvous(key: str, node_name: str) -> int:
    digest = hashlib.blake2b(f"{key}\0{node_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
