"""Non-streaming answers: fetched as streams when simple, so every deadline applies.

A plain ``POST`` without ``stream`` would leave the gateway waiting up to the total
deadline for a node that may never answer. For requests with one choice (``n`` absent or
1) the gateway asks the node for a stream instead, applies the first-token and idle
deadlines and mid-answer continuation exactly as for streaming clients, and assembles
the ``chat.completion`` itself. ``fallback.stream_internally: false`` turns this off;
``n > 1`` always takes the plain path (a continuation cannot rebuild several choices).
Either way the answer is noted in the request's
:class:`~gateway.upstream.answer_record.AnswerRecord`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import cast

from gateway.jsonio import dumps
from gateway.policy.model import Policy
from gateway.text import may_hold_surrogates, scrub_surrogates
from gateway.upstream.aggregate import CompletionBuilder
from gateway.upstream.answer_record import AnswerRecord
from gateway.upstream.answer_stream import AnswerStream
from gateway.upstream.chunks import usage_of
from gateway.upstream.forward import AttemptPlan, Forwarder
from gateway.upstream.pool import Lease
from gateway.upstream.spec_fields import complete_spec_fields


@dataclass(slots=True, kw_only=True)
class Completed:
    """A whole non-streaming answer; ``lease`` is the answering node's slot, still held."""

    lease: Lease
    payload: bytes
    body: dict[str, object] | None
    """``payload`` parsed; None when the node's body was not a JSON object."""


def streams_internally(policy: Policy, plan: AttemptPlan) -> bool:
    n = plan.body.get("n")
    return policy.fallback.stream_internally and n in (None, 1)


async def complete_answer(
    forwarder: Forwarder,
    policy: Policy,
    plan: AttemptPlan,
    record: AnswerRecord,
    *,
    deadline: float,
) -> Completed:
    """The answer to a non-streaming request, or a :class:`~gateway.errors.GatewayError`."""
    if not streams_internally(policy, plan):
        lease, payload = await forwarder.complete(
            policy, plan, failures=record.failures, deadline=deadline
        )
        payload, body = _read_payload(payload, model=lease.node.spec.model)
        attempt = record.start_attempt(lease.node.tier, lease.node.name)
        if body is not None:
            attempt.usage = usage_of(body.get("usage"))
            model, answer_id = body.get("model"), body.get("id")
            attempt.model = model if isinstance(model, str) else None
            attempt.response_id = answer_id if isinstance(answer_id, str) else None
        return Completed(lease=lease, payload=payload, body=body)
    # The assembler takes usage and text from the record and ignores them in chunks:
    # letting usage through spares stripping it, and text-only chunks need not be events.
    answer = await AnswerStream.open(
        forwarder, policy, plan, record, deadline=deadline, show_usage=True, text_events=False
    )
    try:
        builder = CompletionBuilder(record)
        while (event := await answer.next()) is not None:
            builder.add(event.chunk)
            for ready in answer.take_ready():
                builder.add(ready.chunk)
        if answer.error is not None:
            raise answer.error
        body = builder.build()
        payload = dumps(body)
        return Completed(lease=answer.detach_lease(), payload=payload, body=body)
    finally:
        answer.close()


def _read_payload(payload: bytes, *, model: str) -> tuple[bytes, dict[str, object] | None]:
    """The node's answer, completed with the fields OpenAI's schema requires (see
    :mod:`gateway.upstream.spec_fields`; ``model`` is the node's, for a body that names
    none) and its text repaired where UTF-8 cannot encode it (see :mod:`gateway.text`);
    and the answer parsed. A body that is not a JSON object passes unchanged."""
    try:
        parsed = json.loads(payload)
    except (ValueError, RecursionError):
        return payload, None
    if not isinstance(parsed, dict):
        return payload, None
    scrubbed = may_hold_surrogates(payload) and scrub_surrogates(parsed)
    if complete_spec_fields(parsed, model=model) or scrubbed:
        payload = dumps(parsed)
    return payload, cast(dict[str, object], parsed)


__all__ = ["Completed", "complete_answer", "streams_internally"]
