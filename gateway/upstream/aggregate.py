"""Assembling streamed chunks into the ``chat.completion`` a non-streaming client expects.

The gateway fetches simple non-streaming answers as streams (``fallback.stream_internally``)
so that the first-token and idle deadlines and mid-answer continuation apply to them; this
module turns the relayed chunks back into one response body.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.protocol import Usage
from gateway.upstream.chunks import Chunk, choices_of, delta_of, parse_chunk
from gateway.upstream.sse import DONE

_TEXT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal")


@dataclass(slots=True)
class _Choice:
    text: dict[str, list[str]] = field(default_factory=dict)
    tool_calls: dict[int, dict[str, object]] = field(default_factory=dict)
    logprobs: dict[str, list[object]] = field(default_factory=dict)
    finish_reason: str | None = None


@dataclass(slots=True)
class CompletionBuilder:
    """Feed it the payloads of one answer with :meth:`add`; :meth:`build` the body."""

    id: str | None = None
    created: int | None = None
    system_fingerprint: str | None = None
    choices: dict[int, _Choice] = field(default_factory=dict)

    def add(self, data: bytes) -> None:
        if data == DONE:
            return
        chunk = parse_chunk(data)
        if chunk is None:
            return  # never happens: the Answer only passes parsed chunks on
        self._add(chunk)

    def _add(self, chunk: Chunk) -> None:
        if self.id is None and isinstance(chunk.get("id"), str):
            self.id = str(chunk["id"])
        created = chunk.get("created")
        if self.created is None and isinstance(created, int):
            self.created = created
        fingerprint = chunk.get("system_fingerprint")
        if isinstance(fingerprint, str):
            self.system_fingerprint = fingerprint
        for raw in choices_of(chunk):
            index = raw.get("index", 0)
            choice = self.choices.setdefault(index if isinstance(index, int) else 0, _Choice())
            delta = delta_of(raw)
            for name in _TEXT_FIELDS:
                value = delta.get(name)
                if isinstance(value, str) and value:
                    choice.text.setdefault(name, []).append(value)
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    if isinstance(call, dict):
                        _merge_tool_call(choice.tool_calls, call)
            logprobs = raw.get("logprobs")
            if isinstance(logprobs, dict):
                for name, items in logprobs.items():
                    if isinstance(items, list):
                        choice.logprobs.setdefault(name, []).extend(items)
            if raw.get("finish_reason"):
                choice.finish_reason = str(raw["finish_reason"])

    def build(self, *, model: str | None, usage: Usage | None) -> dict[str, object]:
        """The ``chat.completion`` body; ``model`` and ``usage`` are the whole answer's."""
        choices: list[dict[str, object]] = []
        for index in sorted(self.choices):
            choice = self.choices[index]
            message: dict[str, object] = {"role": "assistant"}
            content = "".join(choice.text.get("content", []))
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
                    "finish_reason": choice.finish_reason,
                }
            )
        body: dict[str, object] = {
            "id": self.id or "chatcmpl-gateway",
            "object": "chat.completion",
            "created": self.created or 0,
            "model": model,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage
        if self.system_fingerprint is not None:
            body["system_fingerprint"] = self.system_fingerprint
        return body


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
