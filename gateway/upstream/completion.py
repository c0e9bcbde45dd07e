"""Non-streaming answers: fetched as streams when simple, so every deadline applies.

A plain ``POST`` without ``stream`` would leave the gateway waiting up to the total
deadline for a node that may never answer. For requests with one choice (``n`` absent or
1) the gateway asks the node for a stream instead, applies the first-token and idle
deadlines and mid-answer continuation exactly as for streaming clients, and assembles
the ``chat.completion`` itself. ``fallback.stream_internally: false`` turns this off;
``n > 1`` always takes the plain path (a continuation cannot rebuild several choices).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from gateway.protocol import Tier, Usage
from gateway.routing.policy import Policy
from gateway.text import may_hold_surrogates, scrub_surrogates
from gateway.upstream.aggregate import CompletionBuilder
from gateway.upstream.chunks import usage_of
from gateway.upstream.continuation import Answer
from gateway.upstream.forward import AttemptPlan, Forwarder
from gateway.upstream.pool import Lease


@dataclass(slots=True, kw_only=True)
class Completed:
    """A whole non-streaming answer; ``lease`` is the answering node's slot, still held."""

    lease: Lease
    payload: bytes
    usage_by_tier: list[tuple[Tier, Usage]]


def streams_internally(policy: Policy, plan: AttemptPlan) -> bool:
    n = plan.body.get("n")
    return policy.fallback.stream_internally and n in (None, 1)


async def complete_answer(
    forwarder: Forwarder, policy: Policy, plan: AttemptPlan, *, deadline: float
) -> Completed:
    """The answer to a non-streaming request, or a :class:`~gateway.errors.GatewayError`."""
    if not streams_internally(policy, plan):
        lease, payload = await forwarder.complete(policy, plan, deadline=deadline)
        payload, usage = _read_payload(payload)
        return Completed(
            lease=lease,
            payload=payload,
            usage_by_tier=[(lease.node.tier, usage)] if usage is not None else [],
        )
    streamed = dataclasses.replace(
        plan, body={**plan.body, "stream": True, "stream_options": {"include_usage": True}}
    )
    answer = await Answer.open(forwarder, policy, streamed, deadline=deadline)
    try:
        builder = CompletionBuilder()
        while (data := await answer.next()) is not None:
            builder.add(data)
        if answer.error is not None:
            raise answer.error
        body = builder.build(model=answer.model, usage=answer.total_usage())
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        return Completed(
            lease=answer.detach_lease(), payload=payload, usage_by_tier=answer.usage_by_tier()
        )
    finally:
        answer.close()


def _read_payload(payload: bytes) -> tuple[bytes, Usage | None]:
    """The node's answer, its text repaired where UTF-8 cannot encode it (see
    :mod:`gateway.text`), and its usage."""
    try:
        parsed = json.loads(payload)
    except (ValueError, RecursionError):
        return payload, None
    if not isinstance(parsed, dict):
        return payload, None
    if may_hold_surrogates(payload) and scrub_surrogates(parsed):
        payload = json.dumps(parsed, ensure_ascii=False, separators=(",", ":")).encode()
    return payload, usage_of(parsed.get("usage"))


__all__ = ["Completed", "complete_answer", "streams_internally"]
