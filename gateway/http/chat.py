"""POST /v1/chat/completions: admit, decide, forward with fallback, relay."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web
from opentelemetry import trace

from gateway.accounts.tiers import allowed_tiers, restrict_to_key
from gateway.errors import UpstreamTimeout
from gateway.http.access import CHAT_ACCESS, ChatAccess, session_hash
from gateway.http.body import read_body
from gateway.http.middlewares import API_KEY, CALLER, REQUEST_ID, REQUEST_ID_HEADER
from gateway.http.relay import DONE_EVENT, error_event, sse_event
from gateway.http.validation import parse_chat_request
from gateway.metrics import GatewayMetrics
from gateway.policy.model import Policy
from gateway.routing.decide import Decision, RoutingRequest
from gateway.routing.fitted import decide_fitted
from gateway.routing.needs import request_needs
from gateway.sessions.conversation import Conversation
from gateway.sessions.prompts import TierPrompts
from gateway.shadow.service import Shadowing
from gateway.state import (
    ACCOUNTING,
    FORWARDER,
    METRICS,
    POLICIES,
    SESSIONS,
    SETTINGS,
    SHADOW,
    TRACING,
)
from gateway.telemetry import decision_attributes, passthrough_headers, record_answer, record_route
from gateway.upstream.answer_record import AnswerRecord
from gateway.upstream.answer_stream import AnswerStream
from gateway.upstream.completion import complete_answer
from gateway.upstream.forward import AttemptPlan, Forwarder
from gateway.upstream.pool import Lease

TIER_HEADER = "x-gateway-tier"
NODE_HEADER = "x-gateway-node"
REASON_HEADER = "x-gateway-route-reason"
FALLBACK_HEADER = "x-gateway-fallback"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    app = request.app
    routing = app[POLICIES].current  # read once: one consistent policy for this request
    policy = routing.policy
    started = time.perf_counter()
    raw = await read_body(
        request,
        max_body_bytes=policy.max_body_bytes,
        timeout_s=app[SETTINGS].connections.body_timeout_s,
    )
    chat = parse_chat_request(raw, default_model=policy.routing.default_model)
    headers = {name.lower(): value for name, value in request.headers.items()}
    conversation = await app[SESSIONS].open(
        headers, chat, request_id=request[REQUEST_ID], policy=policy, owner=request.get(CALLER)
    )
    if conversation is not None:
        chat = conversation.request_body(chat)  # stored turns in front
    # What each tier is sent: with a session, fitted into its window; max_tokens per tier.
    prompts = TierPrompts(policy=policy, body=chat, fit_context=conversation is not None)
    needs = request_needs(chat)  # tools, response_format, images, ...: only nodes with them
    tracing, metrics = app[TRACING], app[METRICS]
    with tracing.span("gateway.classify") as classify:
        decision = decide_fitted(
            policy,
            routing.classifier,
            RoutingRequest(
                messages=chat["messages"],
                max_tokens=chat.get("max_tokens") or chat.get("max_completion_tokens"),
                model=chat.get("model", "auto"),
                headers=headers,
                needs=needs,
            ),
            prompts.views(),  # routing judges what will be sent, not the history
        )
        if classify.is_recording():
            classify.set_attributes(decision_attributes(decision, routing.classifier.name))
    key = request.get(API_KEY)
    decision = restrict_to_key(decision, key, policy, needs)  # a key's tiers (free plan: edge)
    record_route(trace.get_current_span(), decision)
    metrics.route_decisions.labels(decision.tier, decision.reason_kind).inc()
    upstream_headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: request[REQUEST_ID]}
    if not tracing.enabled:
        passthrough_headers(headers, upstream_headers)  # with tracing on, each attempt injects
    plan = AttemptPlan(
        tier=decision.tier,
        body=chat,
        pinned_model=decision.model,
        variant=decision.variant,
        headers=upstream_headers,
        session_key=conversation.session_id if conversation else None,
        for_tier=prompts.body_for,
        needs=needs.needs,
        allowed_tiers=allowed_tiers(key),
    )
    record = AnswerRecord()
    request[CHAT_ACCESS] = ChatAccess(
        route_tier=decision.tier,
        route_reason=decision.reason,
        complexity_score=decision.score,
        fallback=record.failures,
        session_hash=session_hash(conversation.session_id) if conversation else None,
    )
    accounting = app[ACCOUNTING]
    admission = None
    if key is not None and accounting.enabled:  # one Redis call, for keys with limits only
        admission = await accounting.admit(
            key,
            policy,
            prompt_tokens=decision.complexity.prompt_tokens,
            max_tokens=prompts.client_budget,
        )
    routed = _Routed(
        forwarder=app[FORWARDER],
        metrics=metrics,
        policy=policy,
        decision=decision,
        plan=plan,
        record=record,
        prompts=prompts,
        conversation=conversation,
        started=started,
        access=request[CHAT_ACCESS],
        request_id=request[REQUEST_ID],
        shadowing=app[SHADOW],
        limit_headers=admission.headers if admission is not None else {},
    )
    try:
        if chat.get("stream"):
            return await _stream(request, routed)
        return await _complete(routed)
    finally:
        if accounting.enabled:  # once, whatever happened: the usage, and the reservation back
            accounting.settle(
                admission,
                key,
                static=CALLER in request,
                record=record,
                policy=policy,
                messages=chat["messages"],
            )


@dataclass(slots=True, kw_only=True)
class _Routed:
    """A routed chat request: what answering it and reporting on it need. Not changed
    once made (not frozen: a frozen dataclass costs several times as much to make, and
    this one is made for every request)."""

    forwarder: Forwarder
    metrics: GatewayMetrics
    policy: Policy
    decision: Decision
    plan: AttemptPlan
    record: AnswerRecord
    prompts: TierPrompts
    conversation: Conversation | None
    started: float
    access: ChatAccess
    request_id: str
    shadowing: Shadowing
    limit_headers: Mapping[str, str]
    """The key's ``x-ratelimit-*`` (and budget warning) headers, for the answer."""

    @property
    def deadline(self) -> float:
        """The request's end in event-loop time: the total deadline counts from arrival."""
        elapsed = time.perf_counter() - self.started
        return self.forwarder.loop.time() + self.policy.fallback.timeouts.total_s - elapsed

    def headers(self, lease: Lease) -> dict[str, str]:
        node = lease.node
        headers = {
            TIER_HEADER: node.tier,
            NODE_HEADER: node.name,
            # Header values must be Latin-1; a policy's rule names may not be.
            REASON_HEADER: self.decision.reason.encode("ascii", "replace").decode(),
        }
        if self.record.failures:
            headers[FALLBACK_HEADER] = ", ".join(
                f"{f.node}:{f.reason}" for f in self.record.failures
            )
        headers.update(self.prompts.response_headers(node.tier))
        if self.limit_headers:
            headers.update(self.limit_headers)
        if self.conversation is not None:
            dropped = self.prompts.prompt(node.tier).dropped
            headers.update(self.conversation.response_headers(node.tier, dropped=dropped))
        return headers

    def failed_before_answer(self) -> None:
        self.metrics.requests.labels(self.decision.tier, "error").inc()
        record_answer(
            trace.get_current_span(),
            tier=None,
            node=None,
            failures=self.record.failures,
            outcome="error",
        )

    def account(self) -> None:
        """Count the tokens of a served answer, each part under the tier that spent it."""
        tokens = self.metrics.tokens
        for tier, usage in self.record.usage_by_tier():
            tokens.labels(tier, "prompt").inc(usage["prompt_tokens"])
            tokens.labels(tier, "completion").inc(usage["completion_tokens"])
            self.access.add_usage(usage)


async def _complete(routed: _Routed) -> web.Response:
    metrics, record = routed.metrics, routed.record
    try:
        # Simple requests are fetched as streams: deadlines and mid-answer recovery apply.
        done = await complete_answer(
            routed.forwarder, routed.policy, routed.plan, record, deadline=routed.deadline
        )
    except Exception:
        routed.failed_before_answer()
        raise
    lease = done.lease
    try:
        tier = lease.node.tier
        routed.account()
        metrics.requests.labels(tier, "ok").inc()
        record_answer(
            trace.get_current_span(),
            tier=tier,
            node=lease.node.name,
            failures=record.failures,
            outcome="ok",
        )
        metrics.duration_s.labels(tier).observe(time.perf_counter() - routed.started)
        if routed.conversation is not None:  # stored before the client can go on
            await routed.conversation.record_completion(done.body, tier)
        if tier == "edge":  # sampled: re-asked on the cloud once this is sent (gateway/shadow)
            routed.shadowing.offer(routed, body=done.body)
        return web.Response(
            body=done.payload, content_type="application/json", headers=routed.headers(lease)
        )
    finally:
        lease.release()


async def _stream(request: web.Request, routed: _Routed) -> web.StreamResponse:
    metrics, record = routed.metrics, routed.record
    options = routed.plan.body.get("stream_options") or {}
    try:
        answer = await AnswerStream.open(
            routed.forwarder,
            routed.policy,
            routed.plan,
            record,
            deadline=routed.deadline,
            show_usage=bool(options.get("include_usage")),
        )
    except Exception:
        routed.failed_before_answer()
        raise
    outcome = "error"
    first_token_s = routed.access.time_to_first_token_s = time.perf_counter() - routed.started
    try:
        assert answer.lease is not None
        tier = answer.node.tier
        metrics.first_token_s.labels(tier).observe(first_token_s)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                # The middleware adds it to prepared-later responses only; this one is sent here.
                REQUEST_ID_HEADER: request[REQUEST_ID],
                **routed.headers(answer.lease),
            }
        )
        await response.prepare(request)
        # Once the headers are out the status can't change: a broken upstream is continued
        # on another node by the AnswerStream, or ends in an in-stream error (never [DONE]).
        while (event := await answer.next()) is not None:
            # What has already arrived goes out in one write: fewer sends, same latency.
            out = [sse_event(event.data)]
            out.extend(sse_event(ready.data) for ready in answer.take_ready())
            await response.write(b"".join(out))
        if answer.error is not None:
            await response.write(error_event(answer.error.body()))
            timed_out = isinstance(answer.error, UpstreamTimeout)
            outcome = "stream_timeout" if timed_out else "stream_truncated"
        else:
            # The turn is stored before [DONE]: a client that sends its next turn the moment
            # it reads [DONE] finds this one in the history.
            if routed.conversation is not None:
                await routed.conversation.record_stream(
                    record.content, answer.node.tier, record.model
                )
            await response.write(DONE_EVENT)
            outcome = "ok"  # served: the client has the whole answer
        # A client may hang up as soon as it reads [DONE] (the openai SDK does), before the
        # end of the body: it was served all the same.
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response
    except (ConnectionResetError, asyncio.CancelledError):
        if outcome != "ok":  # after [DONE], a client that leaves is not a failure
            outcome = "client_disconnected"  # the handler's cancellation closes the upstream
        raise
    finally:
        answer.close()
        if outcome == "ok":  # a failed answer is not a completion, in requests or in tokens
            routed.account()
            if answer.node.tier == "edge":  # sampled: re-asked on the cloud (gateway/shadow)
                routed.shadowing.offer(routed)
        metrics.requests.labels(answer.node.tier, outcome).inc()
        metrics.duration_s.labels(answer.node.tier).observe(time.perf_counter() - routed.started)
        record_answer(
            trace.get_current_span(),
            tier=answer.node.tier,
            node=answer.node.name,
            failures=record.failures,
            outcome=outcome,
            time_to_first_token_s=first_token_s,
            continuations=len(record.attempts) - 1,
        )
