"""The attempt loop: try nodes of the chosen tier, then of the other tier, before the
client has seen a byte. Which failures move on is the policy's ``fallback.on``; whether
a failed node is first retried (and after how long) is :mod:`gateway.upstream.retry`'s."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from gateway.errors import (
    NoCapacity,
    UpstreamClientError,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from gateway.jsonio import dumps
from gateway.metrics import GatewayMetrics
from gateway.policy.capabilities import Capability
from gateway.policy.model import Policy
from gateway.telemetry import NO_ATTEMPT, AttemptSpan, Tracing, disabled_tracing
from gateway.upstream import client
from gateway.upstream.circuit import CircuitState
from gateway.upstream.http1 import Connections
from gateway.upstream.pool import Lease, Node, NodePool
from gateway.upstream.retry import Jitter, same_node_delay
from hybrid_common.protocol import TIERS, ChatCompletionRequest, Tier

T = TypeVar("T")

CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
TIER_NOT_ALLOWED = "tier_not_allowed"
"""The skip reason of a tier the request's API key may not use."""


def other_tier(tier: Tier) -> Tier:
    return "cloud" if tier == "edge" else "edge"


@dataclass(slots=True, kw_only=True)
class Failure:
    """A failed attempt, or (``skipped``) a node passed over without being asked: then
    ``reason`` is a :data:`~gateway.upstream.pool.SkipReason`, and for a tier without
    nodes ``node`` is the tier's name."""

    tier: Tier
    node: str
    reason: str
    skipped: bool = False


@dataclass(slots=True, kw_only=True, frozen=True)
class AttemptPlan:
    """What one request asks of the upstreams. What happened on the way is the caller's
    ``failures`` list, which every attempt appends to."""

    tier: Tier
    body: ChatCompletionRequest
    pinned_model: str | None = None
    session_key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    for_tier: Callable[[Tier, ChatCompletionRequest], ChatCompletionRequest] | None = None
    """Rewrites the body for the tier of the node about to be tried (session context
    fitting: each tier has its own window, so a fallback gets a body of its own); returns
    a new dict each call, which :meth:`encode_for` may change."""
    needs: frozenset[Capability] = frozenset()
    """Only nodes that support all of these are asked, on either tier."""
    allowed_tiers: frozenset[Tier] = frozenset(TIERS)
    """The tiers the request may be served by (its API key's): no attempt, fallback or
    continuation goes to another; one passed over is a skip named :data:`TIER_NOT_ALLOWED`."""
    variant: str | None = None
    """The served model the policy chose on ``tier`` (:attr:`Decision.variant`): only that
    tier's nodes serving it are asked there; a fallback tier takes any of its nodes."""

    def with_body(self, body: ChatCompletionRequest, *, tier: Tier | None = None) -> AttemptPlan:
        """This plan asking for ``body`` instead (on ``tier`` first, when given)."""
        return AttemptPlan(
            tier=self.tier if tier is None else tier,
            body=body,
            pinned_model=self.pinned_model,
            session_key=self.session_key,
            headers=self.headers,
            for_tier=self.for_tier,
            needs=self.needs,
            allowed_tiers=self.allowed_tiers,
            variant=self.variant if tier in (None, self.tier) else None,
        )

    def model_for(self, tier: Tier) -> str | None:
        """The served model the nodes asked on ``tier`` must serve; None: any."""
        if self.pinned_model is not None:
            return self.pinned_model
        return self.variant if tier == self.tier else None

    def encode_for(self, node: Node) -> bytes:
        """The client's body, unknown fields untouched, asking for the node's own model."""
        body = {**self.body} if self.for_tier is None else self.for_tier(node.tier, self.body)
        body["model"] = node.spec.model
        return dumps(body)


class Forwarder:
    def __init__(
        self,
        pool: NodePool,
        connections: Connections,
        metrics: GatewayMetrics,
        *,
        tracing: Tracing | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        """The loop this forwarder serves (made there): every deadline on the way to a node
        is its time, read without looking the loop up again (:mod:`~.loop_timeout`)."""
        self.pool = pool
        self.connections = connections
        self.metrics = metrics
        self.tracing = tracing if tracing is not None else disabled_tracing()
        """Each attempt is a GenAI CLIENT span whose context the node gets as traceparent."""
        self.prefill_rejected: set[str] = set()
        """Nodes that answered a prefill continuation with a 4xx: asked in words next time."""
        self.jitter: Jitter | None = None
        """Replaces the random backoff jitter (tests make it deterministic)."""

    async def complete(
        self,
        policy: Policy,
        plan: AttemptPlan,
        *,
        failures: list[Failure],
        deadline: float | None = None,
    ) -> tuple[Lease, bytes]:
        """Non-streaming answer from the first node that gives one, before ``deadline``
        (event-loop time; default: the policy's total deadline from now). Each failed
        attempt and skipped node is appended to ``failures``."""
        timeouts = policy.fallback.timeouts

        async def call(node: Node, body: bytes, attempt: AttemptSpan) -> bytes:
            _, payload, _ = await client.post_chat(
                self.connections,
                node,
                body,
                headers=attempt.headers(plan.headers),
                timeouts=timeouts,
                loop=self.loop,
                deadline=deadline,
            )
            attempt.completion_payload(payload)
            attempt.end()
            return payload

        return await self._attempts(policy, plan, call, failures=failures, deadline=deadline)

    async def stream(
        self,
        policy: Policy,
        plan: AttemptPlan,
        *,
        failures: list[Failure],
        deadline: float | None = None,
        exclude: frozenset[str] = frozenset(),
        body_for: Callable[[Node], bytes] | None = None,
        continuation: bool = False,
    ) -> tuple[Lease, client.UpstreamStream]:
        """An upstream stream whose first token has arrived, from the first node that gives
        one. ``exclude`` names nodes not to ask; ``body_for`` replaces ``plan.encode_for``
        (a continuation's body depends on what the node can do). The stream's ``attempt``
        span is still open: the caller ends it with the attempt."""
        timeouts = policy.fallback.timeouts

        async def call(node: Node, body: bytes, attempt: AttemptSpan) -> client.UpstreamStream:
            upstream = await client.open_stream(
                self.connections,
                node,
                body,
                headers=attempt.headers(plan.headers),
                timeouts=timeouts,
                loop=self.loop,
                deadline=deadline,
            )
            upstream.attempt = attempt
            return upstream

        return await self._attempts(
            policy,
            plan,
            call,
            failures=failures,
            deadline=deadline,
            exclude=exclude,
            body_for=body_for,
            continuation=continuation,
        )

    async def _attempts(
        self,
        policy: Policy,
        plan: AttemptPlan,
        call: Callable[[Node, bytes, AttemptSpan], Awaitable[T]],
        *,
        failures: list[Failure],
        deadline: float | None = None,
        exclude: frozenset[str] = frozenset(),
        body_for: Callable[[Node], bytes] | None = None,
        continuation: bool = False,
    ) -> tuple[Lease, T]:
        spec = policy.fallback
        loop = self.loop
        if deadline is None:
            deadline = loop.time() + spec.timeouts.total_s
        encode = body_for or plan.encode_for
        tiers: list[Tier] = [plan.tier]
        # A pinned served model lives on one tier only; a tier pin or a routed request may move.
        if spec.cross_tier and plan.pinned_model is None:
            tiers.append(other_tier(plan.tier))
        tried: set[str] = set(exclude)
        retries: dict[str, int] = {}
        attempts = 0
        last_error: Exception | None = None
        tier_index = 0
        again: Lease | None = None  # a node to retry, its slot still held
        while attempts < spec.max_attempts and loop.time() < deadline:
            retry = again is not None
            if again is not None:
                lease, again = again, None
            else:
                if tier_index >= len(tiers):
                    break
                if tiers[tier_index] not in plan.allowed_tiers:
                    self._not_allowed(tiers[tier_index], failures)
                    tier_index += 1
                    continue
                acquired = self.pool.acquire(
                    tiers[tier_index],
                    model=plan.model_for(tiers[tier_index]),
                    exclude=frozenset(tried),
                    session_key=plan.session_key,
                    needs=plan.needs,
                )
                if acquired is None:
                    self._skipped(plan, tiers[tier_index], frozenset(tried), failures)
                    tier_index += 1
                    continue
                lease = acquired
                if failures:
                    last = failures[-1]
                    self.metrics.fallbacks.labels(last.tier, lease.node.tier, last.reason).inc()
            node = lease.node
            tier = node.tier
            attempts += 1
            attempt = (
                self.tracing.attempt(
                    tier=tier,
                    node=node.name,
                    model=node.spec.model,
                    url=node.spec.url,
                    max_tokens=plan.body.get("max_tokens")
                    or plan.body.get("max_completion_tokens"),
                    conversation_id=plan.session_key,
                    number=attempts,
                    retry=retry,
                    continuation=continuation,
                )
                if self.tracing.enabled
                else NO_ATTEMPT
            )
            try:
                body = encode(node)
                attempt.request_body(body)
                result = await call(node, body, attempt)
            except UpstreamError as exc:
                attempt.fail(exc.kind, status_code=_upstream_status(exc))
                if isinstance(exc, UpstreamRateLimited):
                    # Throttling is not a fault: the node answered, it wants us to slow down.
                    node.breaker.release_probe()
                else:
                    node.breaker.record_failure()
                self.metrics.attempts.labels(tier, node.name, exc.kind).inc()
                failures.append(Failure(tier=tier, node=node.name, reason=exc.kind))
                last_error = exc
                if exc.kind not in spec.on:
                    lease.release()
                    raise
                delay = same_node_delay(
                    exc,
                    retries_done=retries.get(node.name, 0),
                    spec=spec,
                    remaining_s=deadline - loop.time(),
                    jitter=self.jitter,
                )
                if (
                    delay is not None
                    and attempts < spec.max_attempts
                    and node.breaker.state is CircuitState.CLOSED
                ):
                    retries[node.name] = retries.get(node.name, 0) + 1
                    try:
                        await asyncio.sleep(delay)
                    except BaseException:
                        lease.release()
                        raise
                    again = lease
                    continue
                lease.release()
                tried.add(node.name)
                continue
            except UpstreamClientError as exc:
                code = exc.upstream_body["error"].get("code")
                attempt.fail(
                    "context_length" if code == CONTEXT_LENGTH_EXCEEDED else "client_error",
                    status_code=exc.upstream_status,
                )
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
                    failures.append(Failure(tier=tier, node=node.name, reason="context_length"))
                    tiers[tier_index + 1 :] = [other]
                    tier_index += 1
                    last_error = exc
                    continue
                raise
            except BaseException as exc:
                cancelled = isinstance(exc, asyncio.CancelledError)
                attempt.fail("cancelled" if cancelled else type(exc).__qualname__)
                lease.release()
                node.breaker.release_probe()
                raise
            node.breaker.record_success()
            self.metrics.attempts.labels(tier, node.name, "ok").inc()
            return lease, result
        if isinstance(last_error, UpstreamClientError):
            raise last_error
        detail = "; ".join(f"{f.node}: {f.reason}" for f in failures) or "no node available"
        if loop.time() >= deadline:
            raise UpstreamTimeout(
                f"The request's total deadline ({spec.timeouts.total_s:g} s) passed "
                f"before any upstream answered ({detail})."
            ) from last_error
        retry_after_s = spec.retry_after_s
        if isinstance(last_error, UpstreamOverloaded) and last_error.retry_after_s is not None:
            # The node said when it takes requests again; pass that on when it is later.
            retry_after_s = max(retry_after_s, math.ceil(last_error.retry_after_s))
        raise NoCapacity(
            f"No upstream could serve the request ({detail}). Retry later.",
            retry_after_s=retry_after_s,
        ) from last_error

    def _not_allowed(self, tier: Tier, failures: list[Failure]) -> None:
        failures.append(Failure(tier=tier, node=tier, reason=TIER_NOT_ALLOWED, skipped=True))
        self.metrics.node_skips.labels(tier, "", TIER_NOT_ALLOWED).inc()

    def _skipped(
        self, plan: AttemptPlan, tier: Tier, tried: frozenset[str], failures: list[Failure]
    ) -> None:
        """Name the nodes of ``tier`` that no attempt could be made on, and why."""
        model = plan.model_for(tier)
        for skip in self.pool.skips(tier, model=model, exclude=tried, needs=plan.needs):
            failures.append(
                Failure(tier=tier, node=skip.node or tier, reason=skip.reason, skipped=True)
            )
            self.metrics.node_skips.labels(tier, skip.node or "", skip.reason).inc()


def _upstream_status(exc: UpstreamError) -> int | None:
    """The node's HTTP status behind a failure, when it answered with one."""
    status = getattr(exc, "upstream_status", None)
    if isinstance(status, int):
        return status
    return exc.status if isinstance(exc, UpstreamOverloaded) else None
