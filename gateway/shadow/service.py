"""Shadowing: a sample of served edge answers re-asked on the cloud tier, in the background.

The chat handler offers each answer the edge served (:meth:`Shadowing.offer`) once the
client has it: the whole stream after ``[DONE]``, or the finished body of a non-streamed
answer, which aiohttp writes as the handler returns, before the shadow's task first runs.
``offer`` decides at once, without I/O (a hash, a few counters, the pool's state), and at
most starts a task; the task's failures stay in it (logged and counted), so a shadow can
neither delay nor fail the client's request. The rules, in order:

1. the policy has a ``shadow`` section and every attempt of the answer was on the edge;
2. the request id is in the sample (:func:`~gateway.shadow.sampling.sampled`);
3. skipped, and counted by reason, when the answer is not one plain text (``not_text``),
   the gateway is stopping (``closing``), ``max_concurrency`` shadow calls are already
   under way in this process (``concurrency``), the store is Redis and no ``REDIS_URL``
   is set (``no_store``), or the cloud has no room (``cloud_unavailable``, ``cloud_busy``:
   :func:`~gateway.shadow.sampling.cloud_room`);
4. otherwise the cloud is sent exactly what the edge was sent (not streamed, one choice),
   through the :class:`~gateway.upstream.forward.Forwarder` with the request's own
   fallback rules but never across tiers, within ``timeout_s``; and the request, both
   answers, their tiers, nodes, models, usage and times are stored
   (:mod:`gateway.shadow.records`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol, cast

from gateway.errors import GatewayError
from gateway.policy.model import Policy
from gateway.policy.shadow import JsonlStoreSpec, ShadowSpec, ShadowStoreSpec
from gateway.shadow.jsonl_store import JsonlShadowStore
from gateway.shadow.metrics import ShadowMetrics
from gateway.shadow.records import (
    RECORD_VERSION,
    AnswerSide,
    RouteSide,
    ShadowRecord,
    answer_side,
    plain_text,
)
from gateway.shadow.redis_store import Client, RedisShadowStore, close_client, redis_client
from gateway.shadow.sampling import cloud_room, sampled
from gateway.shadow.store import ShadowStore, ShadowStoreError
from gateway.upstream.answer_record import AnswerRecord
from gateway.upstream.completion import complete_answer
from gateway.upstream.forward import AttemptPlan, Forwarder
from hybrid_common.protocol import ChatCompletionRequest, Tier

log = logging.getLogger("gateway.shadow")

SHADOW_HEADER: Final = "x-gateway-shadow"
"""Sent with every shadow call (value ``1``), so a node's logs can tell shadows apart."""
SWEEP_INTERVAL_S: Final = 60.0
_NOT_SENT: Final = frozenset({"stream", "stream_options", "n"})
"""Left out of the cloud's copy: one whole answer is what gets compared."""


class Route(Protocol):
    """The routing decision a request was served under."""

    @property
    def tier(self) -> Tier: ...
    @property
    def score(self) -> float: ...
    @property
    def reason(self) -> str: ...
    @property
    def reason_kind(self) -> str: ...


class Served(Protocol):
    """A request whose answer the client has: what the chat handler routed."""

    @property
    def request_id(self) -> str: ...
    @property
    def policy(self) -> Policy: ...
    @property
    def plan(self) -> AttemptPlan: ...
    @property
    def record(self) -> AnswerRecord: ...
    @property
    def decision(self) -> Route: ...
    @property
    def started(self) -> float:
        """``time.perf_counter()`` when the request arrived."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Case:
    """One sampled answer, taken from the request as it was served."""

    request_id: str
    spec: ShadowSpec
    policy: Policy
    """The request's policy, never across tiers."""
    plan: AttemptPlan
    body: ChatCompletionRequest
    answered_at: float
    route: RouteSide
    edge: AnswerSide


class Shadowing:
    """Offers, sampling, the shadow tasks and the stores of one gateway process."""

    def __init__(
        self,
        forwarder: Forwarder,
        metrics: ShadowMetrics,
        *,
        redis_url: str | None,
        redis_cluster: bool = False,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self.forwarder = forwarder
        self.metrics = metrics
        self.redis_url = redis_url
        self.redis_cluster = redis_cluster
        self.sweep_interval_s = sweep_interval_s
        self._redis: Client | None = None
        self._stores: dict[ShadowStoreSpec, ShadowStore] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False
        self._warned_no_store = False

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def start(self, policy: Policy) -> None:
        """Start the sweeper; say now if the policy's store cannot work."""
        self._sweeper = asyncio.create_task(self._sweep_forever())
        if policy.shadow is not None and self._store_for(policy.shadow.store) is None:
            self._warn_no_store()

    def offer(self, served: Served, *, body: Mapping[str, object] | None = None) -> None:
        """Consider an answer the edge served (``body``: the assembled ``chat.completion``
        of a non-streamed one); returns at once, having at most started a shadow task."""
        spec, record = served.policy.shadow, served.record
        if spec is None or not record.attempts or any(a.tier != "edge" for a in record.attempts):
            return
        metrics = self.metrics
        metrics.eligible.inc()
        if not sampled(served.request_id, spec.sample_rate):
            return
        metrics.sampled.inc()
        if "cloud" not in served.plan.allowed_tiers:
            # The request's API key may not use the cloud: its prompt must not go there.
            metrics.skipped.labels("tier_not_allowed").inc()
            return
        text = plain_text(record, body)
        store = self._store_for(spec.store)
        plan = served.plan
        if text is None:
            metrics.skipped.labels("not_text").inc()
            return
        reason = self._no_room(spec, store, plan)
        if reason is not None or store is None:
            metrics.skipped.labels(reason).inc()
            return
        case = _case(served, spec, text, body)
        task = asyncio.create_task(self._shadow(case, store))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _no_room(
        self, spec: ShadowSpec, store: ShadowStore | None, plan: AttemptPlan
    ) -> str | None:
        """Why a sampled answer cannot be shadowed now (rule 3); None when it can."""
        if self._closing:
            return "closing"
        if len(self._tasks) >= spec.max_concurrency:
            return "concurrency"
        if store is None:
            self._warn_no_store()
            return "no_store"
        return cloud_room(
            self.forwarder.pool.nodes("cloud"), needs=plan.needs, busy_above=spec.cloud_busy_above
        )

    async def aclose(self) -> None:
        """Cancel the shadow calls under way (they are samples) and close the stores."""
        self._closing = True
        tasks = [*self._tasks, *([self._sweeper] if self._sweeper else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for store in self._stores.values():
            await store.aclose()
        if self._redis is not None:
            await close_client(self._redis)

    def _store_for(self, spec: ShadowStoreSpec) -> ShadowStore | None:
        """The store ``spec`` names (made once); None for Redis without ``REDIS_URL``."""
        store = self._stores.get(spec)
        if store is not None:
            return store
        if isinstance(spec, JsonlStoreSpec):
            store = JsonlShadowStore(spec)
        else:
            if self.redis_url is None:
                return None
            if self._redis is None:
                self._redis = redis_client(self.redis_url, cluster=self.redis_cluster)
            store = RedisShadowStore(self._redis, spec)
        self._stores[spec] = store
        return store

    def _warn_no_store(self) -> None:
        if not self._warned_no_store:
            self._warned_no_store = True
            log.error("the policy's shadow store is redis, but REDIS_URL is not set: no shadows")

    async def _shadow(self, case: _Case, store: ShadowStore) -> None:
        metrics = self.metrics
        metrics.in_flight.inc()
        try:
            with self.forwarder.tracing.span("gateway.shadow") as span:
                outcome = await self._shadow_once(case, store)
                span.set_attribute("gateway.shadow.outcome", outcome)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The task is the outermost boundary: a bug here must not go unseen, nor reach
            # the client (it never could: the client has its answer).
            metrics.failed.labels("internal").inc()
            log.exception("shadow of request %s failed unexpectedly", case.request_id)
        finally:
            metrics.in_flight.dec()

    async def _shadow_once(self, case: _Case, store: ShadowStore) -> str:
        metrics = self.metrics
        cloud = await self._ask_cloud(case)
        if cloud is None:
            metrics.failed.labels("cloud").inc()
            return "failed_cloud"
        record = ShadowRecord(
            version=RECORD_VERSION,
            id=case.request_id,
            answered_at=round(case.answered_at, 3),
            shadowed_at=round(time.time(), 3),
            messages=case.body.get("messages", []),
            max_tokens=case.body.get("max_tokens"),
            route=case.route,
            edge=case.edge,
            cloud=cloud,
        )
        try:
            await store.append(record)
        except ShadowStoreError as exc:
            metrics.failed.labels("store").inc()
            log.warning("shadow of request %s not stored: %s", case.request_id, exc)
            return "failed_store"
        metrics.stored.inc()
        return "stored"

    async def _ask_cloud(self, case: _Case) -> AnswerSide | None:
        """The cloud's answer to what the edge was sent; None (logged) when none came."""
        record = AnswerRecord()
        started = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + case.spec.timeout_s
        try:
            done = await complete_answer(
                self.forwarder, case.policy, case.plan, record, deadline=deadline
            )
        except GatewayError as exc:
            log.info("shadow of request %s: the cloud gave no answer: %s", case.request_id, exc)
            return None
        done.lease.release()
        if any(attempt.tier != "cloud" for attempt in record.attempts):
            # A context-length refusal moves to a larger window even without cross_tier.
            log.info("shadow of request %s was not answered by the cloud", case.request_id)
            return None
        usage = record.total_usage()
        if usage is not None:
            self.metrics.tokens.labels("prompt").inc(usage["prompt_tokens"])
            self.metrics.tokens.labels("completion").inc(usage["completion_tokens"])
        content = plain_text(record, done.body) or ""
        return answer_side(record, done.body, content, duration_s=time.perf_counter() - started)

    async def _sweep_forever(self) -> None:
        """Apply every store's age cap every ``sweep_interval_s``, whatever fails."""
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            for store in list(self._stores.values()):
                try:
                    await store.sweep()
                    _honour_cancellation()
                except ShadowStoreError as exc:
                    log.warning("shadow store sweep failed: %s", exc)
                except Exception:
                    log.exception("shadow store sweep failed unexpectedly")


def _honour_cancellation() -> None:
    """Raise CancelledError if this task was asked to stop and redis-py ate the request
    (as :func:`gateway.sessions.replay._honour_cancellation` explains): the sweeper would
    go back to sleep and the shutdown would wait for it forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _case(served: Served, spec: ShadowSpec, text: str, body: Mapping[str, object] | None) -> _Case:
    """What the shadow task needs, taken now: the request as the edge was sent it, the
    edge's answer, the decision, and the request's policy, never across tiers."""
    plan, policy, decision = served.plan, served.policy, served.decision
    sent = plan.for_tier("edge", plan.body) if plan.for_tier is not None else plan.body
    body_sent = cast(ChatCompletionRequest, {k: v for k, v in sent.items() if k not in _NOT_SENT})
    return _Case(
        request_id=served.request_id,
        spec=spec,
        policy=dataclasses.replace(
            policy, fallback=dataclasses.replace(policy.fallback, cross_tier=False)
        ),
        plan=AttemptPlan(
            tier="cloud",
            body=body_sent,
            headers={**plan.headers, SHADOW_HEADER: "1"},
            session_key=plan.session_key,
            needs=plan.needs,
        ),
        body=body_sent,
        answered_at=time.time(),
        route=RouteSide(
            tier=decision.tier,
            score=round(decision.score, 4),
            reason=decision.reason,
            reason_kind=decision.reason_kind,
        ),
        edge=answer_side(
            served.record, body, text, duration_s=time.perf_counter() - served.started
        ),
    )


__all__ = ["SHADOW_HEADER", "Served", "Shadowing"]
