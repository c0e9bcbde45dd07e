"""What one shadow record holds: the request and both tiers' answers to it.

A record is written once, when the cloud's answer is in, as one JSON object (version 1):

.. code-block:: json

    {"version": 1, "id": "<x-request-id>", "answered_at": 1764921600.12,
     "shadowed_at": 1764921601.93,
     "messages": [{"role": "user", "content": "..."}], "max_tokens": 512,
     "route": {"tier": "edge", "score": 0.31, "reason": "score 0.31 <= 0.55: ...",
               "reason_kind": "score"},
     "edge": {"tier": "edge", "node": "edge-1", "model": "smollm2-135m-instruct",
              "response_id": "chatcmpl-...", "content": "...", "finish_reason": "stop",
              "usage": {"prompt_tokens": 9, "completion_tokens": 20, "total_tokens": 29},
              "duration_s": 0.41},
     "cloud": {"tier": "cloud", ...}}

``messages`` and ``max_tokens`` are what the edge was sent (with a session: the
conversation as fitted into the edge's window); the cloud was sent exactly the same, so
the two answers are to one question. Times are Unix seconds; ``duration_s`` is the edge
answer's time from the request's arrival, and the cloud's from the shadow call's start.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, TypedDict

from gateway.upstream.answer_record import AnswerRecord
from hybrid_common.protocol import ChatMessage, Tier, Usage

RECORD_VERSION: Final = 1


class RouteSide(TypedDict):
    """The routing decision the request was served under."""

    tier: Tier
    score: float
    reason: str
    reason_kind: str


class AnswerSide(TypedDict):
    """One tier's answer to the request."""

    tier: Tier
    node: str
    model: str | None
    response_id: str | None
    content: str
    finish_reason: str | None
    usage: Usage | None
    duration_s: float


class ShadowRecord(TypedDict):
    version: int
    id: str
    answered_at: float
    shadowed_at: float
    messages: list[ChatMessage]
    max_tokens: int | None
    route: RouteSide
    edge: AnswerSide
    cloud: AnswerSide


def plain_text(record: AnswerRecord, body: Mapping[str, object] | None) -> str | None:
    """The answer's text, or None when it is not one plain text a reader can judge
    (tool calls, several choices, reasoning or refusal deltas, no text at all).

    ``body`` is the assembled ``chat.completion`` of a non-streamed answer (it alone
    holds the text when ``fallback.stream_internally`` is off); None for a stream, whose
    text is the record's.
    """
    if body is None:
        if any(attempt.beyond_text for attempt in record.attempts):
            return None
        return record.content or None
    choices = body.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    if not isinstance(message, dict) or message.get("tool_calls"):
        return None
    content = message.get("content")
    return content if isinstance(content, str) and content else None


def answer_side(
    record: AnswerRecord,
    body: Mapping[str, object] | None,
    content: str,
    *,
    duration_s: float,
) -> AnswerSide:
    """One tier's side of a record, from the answer's record (and its assembled body)."""
    first = record.attempts[0]
    finish = record.finish_reason
    if finish is None and body is not None:  # the plain path notes no finish reason
        choices = body.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            reason = choices[0].get("finish_reason")
            finish = reason if isinstance(reason, str) else None
    return AnswerSide(
        tier=first.tier,
        node=first.node,
        model=record.model,
        response_id=record.id,
        content=content,
        finish_reason=finish,
        usage=record.total_usage(),
        duration_s=round(duration_s, 4),
    )


__all__ = [
    "RECORD_VERSION",
    "AnswerSide",
    "RouteSide",
    "ShadowRecord",
    "answer_side",
    "plain_text",
]
