"""Reading ``chat.completion.chunk`` payloads.

Every upstream event is parsed exactly once, here, into an :class:`Event`: the chunk as
a JSON object and the bytes to pass on. Everything downstream (the answer record, the
client relay, the non-stream assembler, continuation) reads the parsed chunk.
"""

from __future__ import annotations

import json
from typing import NamedTuple, cast

import orjson

from gateway.jsonio import dumps
from gateway.text import scrub_surrogates
from hybrid_common.protocol import Usage

Chunk = dict[str, object]

OUTPUT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal")
"""Delta fields that carry part of the answer's text."""


class Event(NamedTuple):
    """One upstream event: the chunk, and the payload that carries it unchanged."""

    chunk: Chunk
    data: bytes


def parse_chunk(data: bytes) -> Chunk | None:
    """The chunk as a JSON object, or None when the payload is not one (malformed).

    Text that UTF-8 cannot encode (a lone surrogate, see :mod:`gateway.text`) is repaired
    here, with U+FFFD: what a node says must not break the relay, the session or the reply.
    """
    event = parse_event(data)
    return None if event is None else event[0]


def parse_event(data: bytes) -> Event | None:
    """:func:`parse_chunk`, and the payload to pass on: ``data`` itself, or the repaired
    chunk re-encoded when its text had to be repaired."""
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        # orjson refuses lone surrogates (and NaN, deep nesting, ...); the standard
        # parser takes what JSON allows, and the text is repaired below.
        return _parse_leniently(data)
    if type(parsed) is not dict:
        return None
    return Event(parsed, data)  # orjson's strings are valid UTF-8 already


def _parse_leniently(data: bytes) -> Event | None:
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    if scrub_surrogates(parsed):
        data = dump_chunk(parsed)
    return Event(cast(Chunk, parsed), data)


def dump_chunk(chunk: Chunk) -> bytes:
    """A chunk the gateway changed, as compact UTF-8 JSON."""
    return dumps(chunk)


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
        if delta.get("tool_calls") or any(delta.get(name) for name in OUTPUT_FIELDS):
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


__all__ = [
    "OUTPUT_FIELDS",
    "Chunk",
    "Event",
    "add_usage",
    "choices_of",
    "delta_of",
    "dump_chunk",
    "has_output",
    "parse_chunk",
    "parse_event",
    "usage_of",
]
