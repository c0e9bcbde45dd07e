"""POST /v1/chat/completions: admit, decide, forward with fallback, relay."""

from __future__ import annotations

import json
import logging
import time

from aiohttp import web

from gateway.errors import UpstreamError
from gateway.http.middlewares import REQUEST_ID, REQUEST_ID_HEADER
from gateway.http.relay import DONE_EVENT, StreamRelay, error_event
from gateway.http.validation import parse_chat_request, read_body
from gateway.protocol import ChatCompletionRequest, StreamOptions, Usage, error_body
from gateway.routing.decide import Decision, RoutingRequest, decide
from gateway.state import STATE, GatewayState
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
    raw = await read_body(request, max_body_bytes=policy.max_body_bytes)
    chat = parse_chat_request(raw)
    headers = {name.lower(): value for name, value in request.headers.items()}
    decision = decide(
        policy,
        routing.classifier,
        RoutingRequest(
            messages=chat["messages"],
            max_tokens=chat.get("max_tokens") or chat.get("max_completion_tokens"),
            model=chat.get("model", "auto"),
            headers=headers,
        ),
    )
    state.metrics.route_decisions.labels(decision.tier, decision.reason_kind).inc()
    plan = AttemptPlan(
        tier=decision.tier,
        body=chat,
        pinned_model=decision.model,
        headers={"Content-Type": "application/json", REQUEST_ID_HEADER: request[REQUEST_ID]},
    )
    if chat.get("stream"):
        return await _stream(request, state, decision, plan, started)
    return await _complete(state, decision, plan, started)


async def _complete(
    state: GatewayState, decision: Decision, plan: AttemptPlan, started: float
) -> web.Response:
    policy = state.policies.current.policy
    try:
        lease, payload = await state.forwarder.complete(policy, plan)
    except Exception:
        state.metrics.requests.labels(decision.tier, "error").inc()
        raise
    try:
        tier = lease.node.tier
        _account(state, tier, _usage_of(payload))
        state.metrics.requests.labels(tier, "ok").inc()
        state.metrics.duration_s.labels(tier).observe(time.perf_counter() - started)
        return web.Response(
            body=payload, content_type="application/json", headers=_headers(decision, plan, lease)
        )
    finally:
        lease.release()


async def _stream(
    request: web.Request,
    state: GatewayState,
    decision: Decision,
    plan: AttemptPlan,
    started: float,
) -> web.StreamResponse:
    policy = state.policies.current.policy
    options: StreamOptions = {**(plan.body.get("stream_options") or {})}
    relay = StreamRelay(client_wants_usage=bool(options.get("include_usage")))
    options["include_usage"] = True  # always, for accounting; the relay hides it if unwanted
    body: ChatCompletionRequest = {**plan.body, "stream_options": options}
    plan.body = body
    try:
        lease, upstream = await state.forwarder.stream(policy, plan)
    except Exception:
        state.metrics.requests.labels(decision.tier, "error").inc()
        raise
    node = lease.node
    outcome = "error"
    try:
        state.metrics.first_token_s.labels(node.tier).observe(time.perf_counter() - started)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                **_headers(decision, plan, lease),
            }
        )
        await response.prepare(request)
        # Once the headers are out the status can't change: failures become in-stream errors.
        first = relay.process(upstream.first)
        if first is not None:
            await response.write(first)
        try:
            async for event in upstream.rest:
                out = relay.process(event)
                if out is not None:
                    await response.write(out)
                if relay.done:
                    break
        except UpstreamError as exc:
            node.breaker.record_failure()
            log.warning("stream from %s broke after the first byte: %s", node.name, exc.message)
            await response.write(error_event(exc.body()))
            outcome = "stream_broken"
        else:
            if relay.done or relay.complete:
                if not relay.done:
                    await response.write(DONE_EVENT)  # the upstream forgot it; the answer is whole
                outcome = "ok"
            else:
                await response.write(
                    error_event(
                        error_body(
                            f"The {node.tier} node ended the stream before the answer "
                            "was complete.",
                            type="server_error",
                            code="upstream_stream_truncated",
                        )
                    )
                )
                outcome = "stream_truncated"
        await response.write_eof()
        return response
    except ConnectionResetError:
        outcome = "client_disconnected"
        raise
    finally:
        upstream.close()
        lease.release()
        _account(state, node.tier, relay.usage)
        state.metrics.requests.labels(node.tier, outcome).inc()
        state.metrics.duration_s.labels(node.tier).observe(time.perf_counter() - started)


def _headers(decision: Decision, plan: AttemptPlan, lease: Lease) -> dict[str, str]:
    node = lease.node
    headers = {
        TIER_HEADER: node.tier,
        NODE_HEADER: node.name,
        # Header values must be Latin-1; a policy's rule names may not be.
        REASON_HEADER: decision.reason.encode("ascii", "replace").decode(),
    }
    if plan.failures:
        headers[FALLBACK_HEADER] = ", ".join(f"{f.node}:{f.reason}" for f in plan.failures)
    return headers


def _usage_of(payload: bytes) -> Usage | None:
    try:
        parsed = json.loads(payload)
    except ValueError:
        return None
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    return usage if isinstance(usage, dict) else None  # type: ignore[return-value]


def _account(state: GatewayState, tier: str, usage: Usage | None) -> None:
    if not usage:
        return
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int):
        state.metrics.tokens.labels(tier, "prompt").inc(prompt)
    if isinstance(completion, int):
        state.metrics.tokens.labels(tier, "completion").inc(completion)
