"""The policy's ``fallback`` section: what the gateway does when a node fails, and when.

Retries, failover across nodes and tiers, backoff, per-phase deadlines and mid-stream
continuation are read from these values by ``gateway.upstream``;
:class:`gateway.policy.model.Policy` holds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, cast, get_args

from gateway.errors import FailureKind
from gateway.policy.reader import PolicyReader
from hybrid_common.protocol import TIERS, Tier

FAILURE_KINDS: Final[tuple[str, ...]] = get_args(FailureKind)


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    connect_s: float = 2.0
    first_token_s: float = 10.0
    idle_s: float = 15.0
    total_s: float = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ContinuationSpec:
    """Mid-stream recovery: finish a broken answer on another node from its partial text."""

    enabled: bool = True
    prefill_tiers: frozenset[Tier] = frozenset({"cloud"})
    """Tiers whose servers continue a final assistant message (vLLM's
    ``continue_final_message``); elsewhere the gateway asks in a user message."""
    max_continuations: int = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackSpec:
    on: frozenset[FailureKind] = frozenset(cast(tuple[FailureKind, ...], FAILURE_KINDS))
    cross_tier: bool = True
    max_attempts: int = 4
    """All upstream attempts of one request: same-node retries and failovers together."""
    retry_after_s: int = 2
    max_retry_wait_s: float = 5.0
    """Longest wait the gateway spends on one retry (a 429's Retry-After, a backoff)."""
    same_node_retries: int = 1
    """Retries of the same node after a 5xx or a connection reset before failing over."""
    rate_limited_retries: int = 2
    """Retries of the same node after a 429 before failing over."""
    backoff_base_s: float = 0.2
    backoff_max_s: float = 2.0
    stream_internally: bool = True
    """Fetch non-streaming (n=1) answers as streams, so every deadline and mid-answer
    recovery applies to them too; the gateway assembles the chat.completion."""
    continuation: ContinuationSpec = field(default_factory=ContinuationSpec)
    timeouts: Timeouts = field(default_factory=Timeouts)


def parse_fallback(r: PolicyReader, value: object) -> FallbackSpec:
    """The ``fallback`` section; errors name the key path and its line."""
    path = "fallback"
    m = r.mapping(
        value,
        path,
        (
            "on",
            "cross_tier",
            "max_attempts",
            "retry_after_s",
            "max_retry_wait_s",
            "same_node_retries",
            "rate_limited_retries",
            "backoff_s",
            "stream_internally",
            "continuation",
            "timeouts_s",
        ),
    )
    on: set[FailureKind] = set()
    for index, item in enumerate(r.listing(m, path, "on") if "on" in m else FAILURE_KINDS):
        if item not in FAILURE_KINDS:
            raise r.fail(
                f"{path}.on[{index}]", f"must be one of {', '.join(FAILURE_KINDS)}, got {item!r}"
            )
        on.add(cast(FailureKind, item))
    t = r.mapping(
        m.get("timeouts_s", {}), f"{path}.timeouts_s", ("connect", "first_token", "idle", "total")
    )
    tp = f"{path}.timeouts_s"
    timeouts = Timeouts(
        connect_s=r.number(t, tp, "connect", 2.0, low=0.01),
        first_token_s=r.number(t, tp, "first_token", 10.0, low=0.01),
        idle_s=r.number(t, tp, "idle", 15.0, low=0.01),
        total_s=r.number(t, tp, "total", 300.0, low=0.01),
    )
    b = r.mapping(m.get("backoff_s", {}), f"{path}.backoff_s", ("base", "max"))
    backoff_base_s = r.number(b, f"{path}.backoff_s", "base", 0.2, low=0.0, high=60.0)
    backoff_max_s = r.number(b, f"{path}.backoff_s", "max", 2.0, low=0.0, high=600.0)
    if backoff_max_s < backoff_base_s:
        raise r.fail(f"{path}.backoff_s.max", f"must be at least base ({backoff_base_s:g})")
    cp = f"{path}.continuation"
    c = r.mapping(m.get("continuation", {}), cp, ("enabled", "prefill_tiers", "max"))
    prefill: set[Tier] = set()
    listed = r.listing(c, cp, "prefill_tiers") if "prefill_tiers" in c else ["cloud"]
    for index, item in enumerate(listed):
        if item not in TIERS:
            raise r.fail(f"{cp}.prefill_tiers[{index}]", f"must be edge or cloud, got {item!r}")
        prefill.add(item)
    return FallbackSpec(
        on=frozenset(on),
        cross_tier=r.boolean(m, path, "cross_tier", True),
        max_attempts=r.integer(m, path, "max_attempts", 4, high=20),
        retry_after_s=r.integer(m, path, "retry_after_s", 2, high=3600),
        max_retry_wait_s=r.number(m, path, "max_retry_wait_s", 5.0, low=0.0, high=600.0),
        same_node_retries=r.integer(m, path, "same_node_retries", 1, low=0, high=5),
        rate_limited_retries=r.integer(m, path, "rate_limited_retries", 2, low=0, high=10),
        backoff_base_s=backoff_base_s,
        backoff_max_s=backoff_max_s,
        stream_internally=r.boolean(m, path, "stream_internally", True),
        continuation=ContinuationSpec(
            enabled=r.boolean(c, cp, "enabled", True),
            prefill_tiers=frozenset(prefill),
            max_continuations=r.integer(c, cp, "max", 2, low=0, high=10),
        ),
        timeouts=timeouts,
    )


__all__ = ["FAILURE_KINDS", "ContinuationSpec", "FallbackSpec", "Timeouts", "parse_fallback"]
