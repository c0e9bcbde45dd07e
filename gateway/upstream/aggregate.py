"""Assembling streamed chunks into the ``chat.completion`` a non-streaming client expects.

The gateway fetches simple non-streaming answers as streams (``fallback.stream_internally``)
so that the first-token and idle deadlines and mid-answer continuation apply to them; this
module turns the relayed chunks back into one response body.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.upstream.answer_record import AnswerRecord
from gateway.upstream.chunks import Chunk, choices_of
from gateway.upstream.spec_fields import complete_spec_fields

UNKNOWN_MODEL = "unknown"
"""``model`` of an answer whose chunks never named one (the schema requires a string)."""

_OTHER_TEXT_FIELDS = ("reasoning_content", "reasoning", "refusal")
_ALL_TEXT_FIELDS = ("content", *_OTHER_TEXT_FIELDS)
_PLAIN_DELTA = frozenset({"role", "content"})


@dataclass(slots=True)
class _Choice:
    text: dict[str, list[str]] = field(default_factory=dict)
    tool_calls: dict[int, dict[str, object]] = field(default_factory=dict)
    logprobs: dict[str, list[object]] = field(default_factory=dict)
    finish_reason: str | None = None


class CompletionBuilder:
    """Feed it the chunks of one answer with :meth:`add`; :meth:`build` the body.

    What the answer's record holds already (its text, id, model, usage) is read from
    ``record``, not kept again; only the rest (tool calls, reasoning, logprobs, finish
    reasons, further choices) is gathered here.
    """

    __slots__ = ("choices", "record", "system_fingerprint")

    def __init__(self, record: AnswerRecord) -> None:
        self.record = record
        self.system_fingerprint: str | None = None
        self.choices: dict[int, _Choice] = {}

    def add(self, chunk: Chunk) -> None:
        fingerprint = chunk.get("system_fingerprint")
        if isinstance(fingerprint, str):
            self.system_fingerprint = fingerprint
        choices = chunk.get("choices")
        if type(choices) is list and len(choices) == 1:  # the common chunk, spared a list
            raw = choices[0]
            if type(raw) is dict and _record_covers(raw, raw.get("index", 0)):
                return
        for raw in choices_of(chunk):
            index = raw.get("index", 0)
            index = index if isinstance(index, int) else 0
            if _record_covers(raw, index):
                continue
            choice = self.choices.get(index)
            if choice is None:
                choice = self.choices[index] = _Choice()
            delta = raw.get("delta")
            if isinstance(delta, dict) and delta:
                if index != 0:
                    _add_delta(choice, delta, _ALL_TEXT_FIELDS)
                elif not _PLAIN_DELTA.issuperset(delta):  # the record has the text
                    _add_delta(choice, delta, _OTHER_TEXT_FIELDS)
            logprobs = raw.get("logprobs")
            if isinstance(logprobs, dict):
                for name, items in logprobs.items():
                    if isinstance(items, list):
                        choice.logprobs.setdefault(name, []).extend(items)
            if raw.get("finish_reason"):
                choice.finish_reason = str(raw["finish_reason"])

    def build(self) -> dict[str, object]:
        """The ``chat.completion`` body, complete as OpenAI's schema requires (see
        :mod:`gateway.upstream.spec_fields`); ``model`` and ``usage`` are the whole answer's."""
        record = self.record
        model = record.model
        choices: list[dict[str, object]] = []
        indexes = {0, *self.choices} if record.attempts else set(self.choices)
        for index in sorted(indexes):
            choice = self.choices.get(index) or _Choice()
            finish_reason = choice.finish_reason
            if index == 0:  # its text and finish reason are the record's
                content = record.content
                finish_reason = finish_reason or record.finish_reason
            else:
                content = "".join(choice.text.get("content", []))
            message: dict[str, object] = {"role": "assistant"}
            message["content"] = content if content or not choice.tool_calls else None
            for name in ("reasoning_content", "reasoning", "refusal"):
                if name in choice.text:
                    message[name] = "".join(choice.text[name])
            if choice.tool_calls:
                message["tool_calls"] = [choice.tool_calls[i] for i in sorted(choice.tool_calls)]
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": dict(choice.logprobs) if choice.logprobs else None,
                    "finish_reason": finish_reason,
                }
            )
        body: dict[str, object] = {} if record.id is None else {"id": record.id}
        body["object"] = "chat.completion"
        if record.created is not None:
            body["created"] = record.created
        if model is not None:
            body["model"] = model
        body["choices"] = choices
        usage = record.total_usage()
        if usage is not None:
            body["usage"] = usage
        if self.system_fingerprint is not None:
            body["system_fingerprint"] = self.system_fingerprint
        # Only an upstream that names no model in any chunk leaves ``model`` unknown.
        complete_spec_fields(body, model=model or UNKNOWN_MODEL)
        return body


def _record_covers(raw: dict[str, object], index: object) -> bool:
    """The record holds everything this choice says: it is choice 0, without logprobs,
    and its delta has at most a role and text (its finish reason is the record's too)."""
    if index != 0 or raw.get("logprobs"):
        return False
    delta = raw.get("delta")
    return not delta or (isinstance(delta, dict) and _PLAIN_DELTA.issuperset(delta))


def _add_delta(choice: _Choice, delta: dict[str, object], fields: tuple[str, ...]) -> None:
    for name in fields:
        value = delta.get(name)
        if isinstance(value, str) and value:
            choice.text.setdefault(name, []).append(value)
    calls = delta.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            if isinstance(call, dict):
                _merge_tool_call(choice.tool_calls, call)


def _merge_tool_call(calls: dict[int, dict[str, object]], delta: dict[str, object]) -> None:
    """Tool-call deltas arrive in pieces keyed by index; the arguments string is split."""
    index = delta.get("index", len(calls))
    key = index if isinstance(index, int) else len(calls)
    call = calls.setdefault(key, {"id": None, "type": "function", "function": {}})
    for name in ("id", "type"):
        if isinstance(delta.get(name), str):
            call[name] = delta[name]
    function = delta.get("function")
    if isinstance(function, dict):
        merged = call["function"]
        assert isinstance(merged, dict)
        if isinstance(function.get("name"), str):
            merged["name"] = str(merged.get("name") or "") + function["name"]
        if isinstance(function.get("arguments"), str):
            merged["arguments"] = str(merged.get("arguments") or "") + function["arguments"]


__all__ = ["CompletionBuilder"]
