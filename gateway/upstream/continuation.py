"""Asking another node to finish a broken answer.

Once the client has seen part of an answer the gateway cannot start over, but it can
finish it elsewhere. When an answer's stream breaks, a node (the same tier first, then
the other) is asked to go on from the partial text, in one of two forms:

- **prefill** (tiers in ``fallback.continuation.prefill_tiers``; vLLM): the conversation
  plus a final assistant message holding the partial text, with
  ``continue_final_message: true, add_generation_prompt: false``: the model writes the
  next tokens of that very message.
- **prompt** (every other server, and any node that rejected a prefill with a 4xx): the
  partial text as an assistant turn and a user turn asking to continue exactly where it
  stops (a repeat of the partial text is trimmed, see :mod:`gateway.upstream.repeat_guard`).

Reading the answer and relaying the continuation is :mod:`gateway.upstream.answer_stream`'s.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from gateway.errors import UpstreamClientError
from gateway.policy.model import Policy
from gateway.upstream.answer_record import AnswerRecord, ContinuationForm
from gateway.upstream.client import UpstreamStream
from gateway.upstream.forward import CONTEXT_LENGTH_EXCEEDED, AttemptPlan, Forwarder
from gateway.upstream.pool import Lease, Node
from hybrid_common.protocol import ChatCompletionRequest, ChatMessage

log = logging.getLogger("gateway.continuation")

CONTINUE_PROMPT = (
    "Your previous answer was cut off. Continue it exactly where it stops: do not repeat "
    "any of it, add no preamble, just write the rest."
)


def continuation_body(
    body: ChatCompletionRequest, partial: str, form: ContinuationForm, *, tokens_used: int
) -> ChatCompletionRequest:
    """The request that asks a node for the rest of ``partial``."""
    messages: list[ChatMessage] = [*body.get("messages", [])]
    messages.append({"role": "assistant", "content": partial})
    out: ChatCompletionRequest = {**body, "messages": messages}
    extra: dict[str, object] = {}
    if form == "prefill":
        extra = {"continue_final_message": True, "add_generation_prompt": False}
    else:
        messages.append({"role": "user", "content": CONTINUE_PROMPT})
    for key in ("max_tokens", "max_completion_tokens"):
        limit = body.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool):
            # What is left of the client's budget; at least one token, so the node can
            # still produce its finish reason.
            out[key] = max(1, limit - tokens_used)
    return {**out, **extra}  # type: ignore[typeddict-item]


def why_not_continue(
    policy: Policy, plan: AttemptPlan, record: AnswerRecord, *, deadline: float
) -> str | None:
    """Why the broken answer in ``record`` cannot be continued, or None when it can."""
    spec = policy.fallback.continuation
    if not spec.enabled:
        return "continuation is disabled by the policy"
    if len(record.attempts) > spec.max_continuations:
        return f"it was already continued {spec.max_continuations} times"
    if any(attempt.beyond_text for attempt in record.attempts):
        return "it holds tool calls, reasoning or several choices, which text cannot carry on"
    if plan.body.get("n") not in (None, 1):
        return "n > 1"
    if not record.content:
        return "it has no text to continue from"
    if deadline - asyncio.get_running_loop().time() <= 0:
        return "the request's deadline has passed"
    return None


@dataclass(slots=True, frozen=True)
class Continuation:
    """A node that took the answer over, its first new token already in."""

    lease: Lease
    upstream: UpstreamStream
    form: ContinuationForm


async def continue_elsewhere(
    forwarder: Forwarder,
    policy: Policy,
    plan: AttemptPlan,
    record: AnswerRecord,
    *,
    broken: Node,
    reason: str,
    exclude: frozenset[str],
    deadline: float,
) -> Continuation:
    """Ask the nodes not in ``exclude`` for the rest of the answer; raises the gateway
    error of the last node asked when none gives it."""
    spec = policy.fallback.continuation
    partial = record.content
    used = sum(attempt.output_chunks for attempt in record.attempts)
    plans = {
        form: plan.with_body(
            continuation_body(plan.body, partial, form, tokens_used=used),
            tier=broken.tier,  # same tier first: same model family, most coherent
        )
        for form in ("prefill", "prompt")
    }
    asked: list[tuple[Node, ContinuationForm]] = []

    def body_for(node: Node) -> bytes:
        form: ContinuationForm = (
            "prefill"
            if node.tier in spec.prefill_tiers and node.name not in forwarder.prefill_rejected
            else "prompt"
        )
        asked.append((node, form))
        return plans[form].encode_for(node)

    while True:
        try:
            lease, upstream = await forwarder.stream(
                policy,
                plans["prompt"],
                failures=record.failures,
                deadline=deadline,
                exclude=exclude,
                body_for=body_for,
                continuation=True,
            )
        except UpstreamClientError as exc:
            node, form = asked[-1]
            if form != "prefill" or exc.upstream_body["error"].get("code") == (
                CONTEXT_LENGTH_EXCEEDED
            ):
                raise  # not about the prefill: the text itself does not fit
            # This server can't continue a message: remember, and ask it in words.
            log.info("%s node %s rejected a prefill continuation", node.tier, node.name)
            forwarder.prefill_rejected.add(node.name)
            _count(forwarder, broken, node, "prefill", "rejected")
            continue
        break
    node, form = asked[-1]
    _count(forwarder, broken, node, form, "ok")
    upstream.attempt.set("gateway.continuation.form", form)
    upstream.attempt.set("gateway.continuation.of", broken.name)
    log.info(
        "continuing an answer of %s (%s) on %s node %s by %s",
        broken.name,
        reason,
        node.tier,
        node.name,
        form,
    )
    return Continuation(lease=lease, upstream=upstream, form=form)


def _count(forwarder: Forwarder, broken: Node, node: Node, form: str, result: str) -> None:
    forwarder.metrics.continuations.labels(broken.tier, node.tier, form, result).inc()


__all__ = [
    "CONTINUE_PROMPT",
    "Continuation",
    "continuation_body",
    "continue_elsewhere",
    "why_not_continue",
]
