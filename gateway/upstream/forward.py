"""The attempt loop: try nodes of the chosen tier, then of the other tier, before the
client has seen a byte. Which failures move on is the policy's ``fallback.on``."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp

from gateway.errors import NoCapacity, UpstreamClientError, UpstreamError
from gateway.metrics import GatewayMetrics
from gateway.protocol import ChatCompletionRequest, Tier
from gateway.routing.policy import Policy
from gateway.upstream import client
from gateway.upstream.pool import Lease, Node, NodePool

T = TypeVar("T")

CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"


def other_tier(tier: Tier) -> Tier:
    return "cloud" if tier == "edge" else "edge"


@dataclass(slots=True, kw_only=True)
class Failure:
    tier: Tier
    node: str
    reason: str


@dataclass(slots=True, kw_only=True)
class AttemptPlan:
    """What one request asks of the upstreams, and what happened on the way."""

    tier: Tier
    body: ChatCompletionRequest
    pinned_model: str | None = None
    session_key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    def encode_for(self, node: Node) -> bytes:
        """The client's body, unknown fields untouched, asking for the node's own model."""
        body = dict(self.body)
        body["model"] = node.spec.model
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class Forwarder:
    def __init__(
        self, pool: NodePool, session: aiohttp.ClientSession, metrics: GatewayMetrics
    ) -> None:
        self.pool = pool
        self.session = session
        self.metrics = metrics

    async def complete(self, policy: Policy, plan: AttemptPlan) -> tuple[Lease, bytes]:
        """Non-streaming answer from the first node that gives one."""
        timeouts = policy.fallback.timeouts

        async def call(node: Node, body: bytes) -> bytes:
            _, payload, _ = await client.post_chat(
                self.session, node, body, headers=plan.headers, timeouts=timeouts
            )
            return payload

        return await self._attempts(policy, plan, call)

    async def stream(
        self, policy: Policy, plan: AttemptPlan
    ) -> tuple[Lease, client.UpstreamStream]:
        """An upstream stream whose first event has arrived, from the first node that gives one."""
        timeouts = policy.fallback.timeouts

        async def call(node: Node, body: bytes) -> client.UpstreamStream:
            return await client.open_stream(
                self.session, node, body, headers=plan.headers, timeouts=timeouts
            )

        return await self._attempts(policy, plan, call)

    async def _attempts(
        self, policy: Policy, plan: AttemptPlan, call: Callable[[Node, bytes], Awaitable[T]]
    ) -> tuple[Lease, T]:
        tiers: list[Tier] = [plan.tier]
        # A pinned served model lives on one tier only; a tier pin or a routed request may move.
        if policy.fallback.cross_tier and plan.pinned_model is None:
            tiers.append(other_tier(plan.tier))
        tried: set[str] = set()
        attempts = 0
        last_error: Exception | None = None
        tier_index = 0
        while tier_index < len(tiers) and attempts < policy.fallback.max_attempts:
            tier = tiers[tier_index]
            lease = self.pool.acquire(
                tier,
                model=plan.pinned_model,
                exclude=frozenset(tried),
                session_key=plan.session_key,
            )
            if lease is None:
                tier_index += 1
                continue
            node = lease.node
            if plan.failures:
                last = plan.failures[-1]
                self.metrics.fallbacks.labels(last.tier, tier, last.reason).inc()
            attempts += 1
            try:
                result = await call(node, plan.encode_for(node))
            except UpstreamError as exc:
                lease.release()
                node.breaker.record_failure()
                self.metrics.attempts.labels(tier, node.name, exc.kind).inc()
                tried.add(node.name)
                plan.failures.append(Failure(tier=tier, node=node.name, reason=exc.kind))
                last_error = exc
                if exc.kind not in policy.fallback.on:
                    raise
                continue
            except UpstreamClientError as exc:
                lease.release()
                node.breaker.record_success()  # it answered: the node is fine, the request isn't
                self.metrics.attempts.labels(tier, node.name, "client_error").inc()
                other = other_tier(tier)
                if (
                    exc.upstream_body["error"].get("code") == CONTEXT_LENGTH_EXCEEDED
                    and plan.pinned_model is None
                    and policy.tiers[other].context_window > policy.tiers[tier].context_window
                ):
                    # Not retried on this model: only the larger window can take it.
                    plan.failures.append(
                        Failure(tier=tier, node=node.name, reason="context_length")
                    )
                    tiers[tier_index + 1 :] = [other]
                    tier_index += 1
                    last_error = exc
                    continue
                raise
            except BaseException:
                lease.release()
                node.breaker.release_probe()
                raise
            node.breaker.record_success()
            self.metrics.attempts.labels(tier, node.name, "ok").inc()
            return lease, result
        if isinstance(last_error, UpstreamClientError):
            raise last_error
        detail = "; ".join(f"{f.node}: {f.reason}" for f in plan.failures) or "no node available"
        raise NoCapacity(
            f"No upstream could serve the request ({detail}). Retry later.",
            retry_after_s=policy.fallback.retry_after_s,
        ) from last_error
