"""Estimating the tokens of an attempt that broke before its node reported usage.

A continued answer is accounted attempt by attempt; an attempt cut short still spent
tokens. Its prompt is estimated by counting the request's messages (and, for a
continuation, the partial answer it was sent); its completion by the chunks that carried
output (one token each on vLLM and llama.cpp).
"""

from __future__ import annotations

from gateway.tokens import count_tokens
from gateway.upstream.answer_record import AnswerRecord, AttemptRecord
from hybrid_common.protocol import ChatMessage, Usage

MESSAGE_OVERHEAD_TOKENS = 4
"""Template tokens per message."""


def estimate_prompt_tokens(messages: list[ChatMessage]) -> int:
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            total += count_tokens(content)
        elif isinstance(content, list):
            total += sum(count_tokens(p.get("text", "")) for p in content if isinstance(p, dict))
        total += MESSAGE_OVERHEAD_TOKENS
    return total


def estimate_usage(
    messages: list[ChatMessage], record: AnswerRecord, attempt: AttemptRecord
) -> Usage:
    """What ``attempt`` of the answer in ``record`` most likely spent."""
    prompt = estimate_prompt_tokens(messages)
    if attempt.form is not None:  # a continuation was also sent the text so far
        sent = "".join(record.text[: attempt.text_from])
        prompt += count_tokens(sent) + MESSAGE_OVERHEAD_TOKENS
    completion = attempt.output_chunks
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


__all__ = ["MESSAGE_OVERHEAD_TOKENS", "estimate_prompt_tokens", "estimate_usage"]
