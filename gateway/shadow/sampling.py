"""Which served edge answers are shadowed, and whether the cloud has room for one now.

Both are pure functions: the sample is a hash of the request id, so it is the same on
every replica and in every run (a test or an operator can say in advance which ids are
in), and the room check reads the node pool's live state without changing it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final, Literal

from gateway.policy.capabilities import Capability
from gateway.upstream.circuit import CircuitState
from gateway.upstream.pool import Node

_SPACE: Final = float(1 << 64)

NoRoom = Literal["cloud_unavailable", "cloud_busy"]
"""Why the cloud tier cannot take a shadow call now: no node could serve it at all
(none configured with the request's needs, unhealthy, circuit open), or every node that
could is full or busier than the policy's ``cloud_busy_above``."""


def _hash(request_id: str) -> int:
    digest = hashlib.blake2b(
        request_id.encode("utf-8", "surrogatepass"), digest_size=8, person=b"gw-shadow"
    ).digest()
    return int.from_bytes(digest, "big")


def sample_point(request_id: str) -> float:
    """The request id's place in [0, 1]: uniform over ids, fixed for each id."""
    return _hash(request_id) / _SPACE


def sampled(request_id: str, rate: float) -> bool:
    """Whether the request is in a sample of share ``rate`` (0 none, 1 all)."""
    # Compared as integers scaled by 2**64: exact, so a rate of 1 takes every id.
    return _hash(request_id) < rate * _SPACE


def cloud_room(
    nodes: Iterable[Node], *, needs: frozenset[Capability], busy_above: float
) -> NoRoom | None:
    """Why the cloud ``nodes`` cannot take a shadow call with ``needs``; None when one can.

    A shadow takes spare room only: the least busy node that could serve it (in-flight
    share of its limit plus its vLLM load score, as the pool balances) must be at most
    ``busy_above``, so client requests routed to the cloud never queue behind shadows.
    """
    # A closed breaker only: a half-open node's one probe belongs to client traffic.
    usable = [
        n
        for n in nodes
        if needs <= n.spec.supports and n.usable() and n.breaker.state is CircuitState.CLOSED
    ]
    if not usable:
        return "cloud_unavailable"
    open_nodes = [n for n in usable if not n.full]
    if not open_nodes or min(n.busyness() for n in open_nodes) > busy_above:
        return "cloud_busy"
    return None


__all__ = ["NoRoom", "cloud_room", "sample_point", "sampled"]
