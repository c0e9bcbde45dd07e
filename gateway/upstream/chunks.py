"""Reading ``chat.completion.chunk`` payloads: what an answer has said so far.

The gateway parses every upstream event once here to know where the answer stands:
its text (for a continuation elsewhere), whether it finished, its usage, and whether
it carries anything a continuation could not reproduce (tool calls, several choices).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import cast

from gateway.protocol import Usage
from gateway.text import may_hold_surrogates, scrub_surrogates

Chunk = dict[str, object]

_OUTPUT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal")


def parse_chunk(data: bytes) -> Chunk | None:
    """The chunk as a JSON object, or None when the payload is not one (malformed).

    Text that UTF-8 cannot encode (a lone surrogate, see :mod:`gateway.text`) is repaired
    here, with U+FFFD: what a node says must not break the relay, the session or the reply.
    """
    event = parse_event(data)
    return None if event is None else event[0]


def parse_event(data: bytes) -> tuple[Chunk, bytes] | None:
    """:func:`parse_chunk`, and the payload to pass on: ``data`` itself, or the repaired
    chunk re-encoded when its text had to be repaired."""
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    if may_hold_surrogates(data) and scrub_surrogates(parsed):
        data = json.dumps(parsed, ensure_ascii=False, separators=(",", ":")).encode()
    return cast(Chunk, parsed), data


def choices_of(chunk: Chunk) -> list[dict[str, object]]:
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return []
    return [c for c in choices if isinstance(c, dict)]


def delta_of(choice: dict[str, object]) -> dict[str, object]:
    delta = choice.get("delta")
    return cast(dict[str, object], delta) if isinstance(delta, dict) else {}


def has_output(chunk: Chunk) -> bool:
    """Whether the chunk carries part of the answer: text, a tool call, or a finish reason.

    A role-only opening chunk does not: servers send it before the model produced
    anything, so it must not satisfy the first-token deadline.
    """
    for choice in choices_of(chunk):
        if choice.get("finish_reason"):
            return True
        delta = delta_of(choice)
        if delta.get("tool_calls") or any(delta.get(name) for name in _OUTPUT_FIELDS):
            return True
    return False


def usage_of(value: object) -> Usage | None:
    """A usage object with integer counts, or None."""
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    total = value.get("total_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total if isinstance(total, int) else prompt + completion,
    }


def add_usage(a: Usage | None, b: Usage | None) -> Usage | None:
    if a is None or b is None:
        return a or b
    return {
        "prompt_tokens": a["prompt_tokens"] + b["prompt_tokens"],
        "completion_tokens": a["completion_tokens"] + b["completion_tokens"],
        "total_tokens": a["total_tokens"] + b["total_tokens"],
    }


@dataclass(slots=True)
class AnswerState:
    """What one upstream attempt's chunks said, updated chunk by chunk."""

    id: str | None = None
    created: int | None = None
    model: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    output_chunks: int = 0
    """Chunks that carried text: one token each on vLLM and llama.cpp, which is how the
    gateway estimates the completion tokens of an attempt that never reported usage."""
    tool_calls: bool = False
    other_output: bool = False
    """Reasoning or refusal deltas: output that a text continuation cannot carry on."""
    other_choices: bool = False
    text: list[str] = field(default_factory=list)
    choices_seen: set[int] = field(default_factory=set)
    choices_finished: set[int] = field(default_factory=set)

    def observe(self, chunk: Chunk) -> None:
        if self.id is None and isinstance(chunk.get("id"), str):
            self.id = cast(str, chunk["id"])
        if self.created is None and isinstance(chunk.get("created"), int):
            self.created = cast(int, chunk["created"])
        if isinstance(chunk.get("model"), str):
            self.model = cast(str, chunk["model"])
        usage = usage_of(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        for choice in choices_of(chunk):
            index = choice.get("index", 0)
            index = index if isinstance(index, int) else 0
            self.choices_seen.add(index)
            if index != 0:
                self.other_choices = True
            delta = delta_of(choice)
            content = delta.get("content")
            other = any(delta.get(name) for name in _OUTPUT_FIELDS if name != "content")
            if isinstance(content, str) and content:
                self.text.append(content)
            if (isinstance(content, str) and content) or other:
                self.output_chunks += 1
            if other:
                self.other_output = True
            if delta.get("tool_calls"):
                self.tool_calls = True
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
                self.choices_finished.add(index)

    @property
    def partial_text(self) -> str:
        return "".join(self.text)

    @property
    def finished(self) -> bool:
        """Every choice that appeared has its finish reason (with n > 1, one is not enough)."""
        return bool(self.choices_finished) and self.choices_seen <= self.choices_finished


__all__ = [
    "AnswerState",
    "Chunk",
    "add_usage",
    "choices_of",
    "delta_of",
    "has_output",
    "parse_chunk",
    "parse_event",
    "usage_of",
]
