"""POST /v1/chat/completions: admit, decide, forward with fallback, relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import web
from opentelemetry import trace

from gateway.errors import UpstreamTimeout
from gateway.http.access import CHAT_ACCESS, ChatAccess, session_hash
from gateway.http.body import read_body
from gateway.http.middlewares import CALLER, REQUEST_ID, REQUEST_ID_HEADER
from gateway.http.relay import DONE_EVENT, StreamRelay, error_event
from gateway.http.validation import parse_chat_request
from gateway.protocol import ChatCompletionRequest, StreamOptions, Usage
from gateway.routing.capabilities import request_needs
from gateway.routing.decide import Decision, RoutingRequest
from gateway.routing.fitted import decide_fitted
from gateway.routing.policy import Policy
from gateway.sessions.conversation import Conversation
from gateway.sessions.prompts import TierPrompts
from gateway.state import STATE, GatewayState
from gateway.telemetry import decision_attributes, passthrough_headers, record_answer, record_route
from gateway.upstream.completion import complete_answer
from gateway.upstream.continuation import Answer
from gateway.upstream.forward import AttemptPlan
from gateway.upstream.pool import Lease

log = logging.getLogger("gateway.chat")

TIER_HEADER = "x-gateway-tier"
NODE_HEADER = "x-gateway-node"
REASON_HEADER = "x-gateway-route-reason"
FALLBACK_HEADER = "x-gateway-fallback"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    routing = state.policies.current  # read once: one consistent policy for this request
    policy = routing.policy
    started = time.perf_counter()
    raw = await read_body(
        request,
        max_body_bytes=policy.max_body_bytes,
        timeout_s=state.settings.connections.body_timeout_s,
    )
    chat = parse_chat_request(raw)
    headers = {name.lower(): value for name, value in request.headers.items()}
    conversation = (
        await state.sessions.open(
            headers, chat, request_id=request[REQUEST_ID], policy=policy, owner=request.get(CALLER)
        )
        if state.sessions is not None
        else None
    )
    if conversation is not None:
        chat = conversation.request_body(chat)  # stored turns in front
    # What each tier is sent: with a session, fitted into its window; max_tokens per tier.
    prompts = TierPrompts(policy=policy, body=chat, fit_context=conversation is not None)
    needs = request_needs(chat)  # tools, response_format, images, ...: only nodes with them
    with state.tracing.span("gateway.classify") as classify:
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
    record_route(trace.get_current_span(), decision)
    state.metrics.route_decisions.labels(decision.tier, decision.reason_kind).inc()
    upstream_headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: request[REQUEST_ID]}
    if not state.tracing.enabled:
        passthrough_headers(headers, upstream_headers)  # with tracing on, each attempt injects
    plan = AttemptPlan(
        tier=decision.tier,
        body=chat,
        pinned_model=decision.model,
        headers=upstream_headers,
        session_key=conversation.session_id if conversation else None,
        for_tier=prompts.body_for,
        needs=needs.needs,
    )
    access = request[CHAT_ACCESS] = ChatAccess(
        route_tier=decision.tier,
        route_reason=decision.reason,
        complexity_score=decision.score,
        fallback=plan.failures,
        session_hash=session_hash(conversation.session_id) if conversation else None,
    )
    if chat.get("stream"):
        return await _stream(
            request,
            state,
            policy,
            decision,
            plan,
            started,
            conversation,
            access=access,
            prompts=prompts,
        )
    return await _complete(
        state, policy, decision, plan, started, conversation, access=access, prompts=prompts
    )


async def _complete(
    state: GatewayState,
    policy: Policy,
    decision: Decision,
    plan: AttemptPlan,
    started: float,
    conversation: Conversation | None = None,
    *,
    access: ChatAccess,
    prompts: TierPrompts,
) -> web.Response:
    try:
        # Simple requests are fetched as streams: deadlines and mid-answer recovery apply.
        done = await complete_answer(
            state.forwarder, policy, plan, deadline=_deadline(policy, started)
        )
    except Exception:
        state.metrics.requests.labels(decision.tier, "error").inc()
        record_answer(
            trace.get_current_span(), tier=None, node=None, failures=plan.failures, outcome="error"
        )
        raise
    lease, payload = done.lease, done.payload
    try:
        tier = lease.node.tier
        for part_tier, usage in done.usage_by_tier:
            _account(state, part_tier, usage)
            access.add_usage(usage)
        state.metrics.requests.labels(tier, "ok").inc()
        record_answer(
            trace.get_current_span(),
            tier=tier,
            node=lease.node.name,
            failures=plan.failures,
            outcome="ok",
        )
        state.metrics.duration_s.labels(tier).observe(time.perf_counter() - started)
        if conversation is not None:
            await conversation.record_completion(payload, tier)  # before the client can go on
        return web.Response(
            body=payload,
            content_type="application/json",
            headers=_headers(decision, plan, lease, prompts, conversation),
        )
    finally:
        lease.release()


async def _stream(
    request: web.Request,
    state: GatewayState,
    policy: Policy,
    decision: Decision,
    plan: AttemptPlan,
    started: float,
    conversation: Conversation | None = None,
    *,
    access: ChatAccess,
    prompts: TierPrompts,
) -> web.StreamResponse:
    options: StreamOptions = {**(plan.body.get("stream_options") or {})}
    relay = StreamRelay(client_wants_usage=bool(options.get("include_usage")))
    options["include_usage"] = True  # always, for accounting; the relay hides it if unwanted
    body: ChatCompletionRequest = {**plan.body, "stream_options": options}
    plan.body = body
    try:
        answer = await Answer.open(
            state.forwarder, policy, plan, deadline=_deadline(policy, started)
        )
    except Exception:
        state.metrics.requests.labels(decision.tier, "error").inc()
        record_answer(
            trace.get_current_span(), tier=None, node=None, failures=plan.failures, outcome="error"
        )
        raise
    outcome = "error"
    first_token_s = access.time_to_first_token_s = time.perf_counter() - started
    try:
        assert answer.lease is not None
        tier = answer.node.tier
        state.metrics.first_token_s.labels(tier).observe(first_token_s)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                # The middleware adds it to prepared-later responses only; this one is sent here.
                REQUEST_ID_HEADER: request[REQUEST_ID],
                **_headers(decision, plan, answer.lease, prompts, conversation),
            }
        )
        await response.prepare(request)
        # Once the headers are out the status can't change: a broken upstream is continued
        # on another node by the Answer, or ends in an in-stream error (never in [DONE]).
        while (data := await answer.next()) is not None:
            out = relay.process(data)
            if out is not None and not relay.done:
                await response.write(out)
        if answer.error is not None:
            await response.write(error_event(answer.error.body()))
            timed_out = isinstance(answer.error, UpstreamTimeout)
            outcome = "stream_timeout" if timed_out else "stream_truncated"
        else:
            # The turn is stored before [DONE]: a client that sends its next turn the moment
            # it reads [DONE] finds this one in the history.
            if conversation is not None:
                await conversation.record_stream(
                    "".join(relay.text), answer.node.tier, answer.model
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
            for part_tier, usage in answer.usage_by_tier():
                _account(state, part_tier, usage)
                access.add_usage(usage)
        state.metrics.requests.labels(answer.node.tier, outcome).inc()
        state.metrics.duration_s.labels(answer.node.tier).observe(time.perf_counter() - started)
        record_answer(
            trace.get_current_span(),
            tier=answer.node.tier,
            node=answer.node.name,
            failures=plan.failures,
            outcome=outcome,
            time_to_first_token_s=first_token_s,
            continuations=len(answer.segments) - 1,
        )


def _deadline(policy: Policy, started: float) -> float:
    """The request's end in event-loop time: the total deadline counts from its arrival."""
    elapsed = time.perf_counter() - started
    return asyncio.get_running_loop().time() + policy.fallback.timeouts.total_s - elapsed


def _headers(
    decision: Decision,
    plan: AttemptPlan,
    lease: Lease,
    prompts: TierPrompts,
    conversation: Conversation | None = None,
) -> dict[str, str]:
    node = lease.node
    headers = {
        TIER_HEADER: node.tier,
        NODE_HEADER: node.name,
        # Header values must be Latin-1; a policy's rule names may not be.
        REASON_HEADER: decision.reason.encode("ascii", "replace").decode(),
    }
    if plan.failures:
        headers[FALLBACK_HEADER] = ", ".join(f"{f.node}:{f.reason}" for f in plan.failures)
    headers.update(prompts.response_headers(node.tier))
    if conversation is not None:
        dropped = prompts.prompt(node.tier).dropped
        headers.update(conversation.response_headers(node.tier, dropped=dropped))
    return headers


def _account(state: GatewayState, tier: str, usage: Usage | None) -> None:
    if not usage:
        return
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int):
        state.metrics.tokens.labels(tier, "prompt").inc(prompt)
    if isinstance(completion, int):
        state.metrics.tokens.labels(tier, "completion").inc(completion)
