"""The one record of an answer: what the client was told, and which attempts told it.

Each upstream event is observed here once. The client relay, the non-stream assembler,
mid-stream continuation, the session recorder, metrics and spans all read this record
instead of keeping their own copies of the text, the usage, the model or the failures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gateway.upstream.chunks import OUTPUT_FIELDS, Chunk, add_usage, usage_of
from gateway.upstream.forward import Failure
from hybrid_common.protocol import Tier, Usage

ContinuationForm = Literal["prefill", "prompt"]
"""How a node was asked to go on with a broken answer (see :mod:`gateway.upstream.continuation`)."""

_OTHER_OUTPUT = tuple(name for name in OUTPUT_FIELDS if name != "content")
_PLAIN_DELTA = frozenset({"role", "content"})
"""A delta with only these keys (nearly all of them) needs no closer look."""


@dataclass(slots=True, kw_only=True)
class AttemptRecord:
    """One upstream attempt's share of the answer, updated chunk by chunk."""

    tier: Tier
    node: str
    form: ContinuationForm | None = None
    """None for the attempt that started the answer."""
    text_from: int = 0
    """Where this attempt's text starts in :attr:`AnswerRecord.text`."""
    response_id: str | None = None
    """The node's own ``id`` for this attempt (the client keeps the first attempt's)."""
    created: int | None = None
    model: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    """As the node reported it; estimated (:attr:`usage_estimated`) when it broke first."""
    usage_estimated: bool = False
    output_chunks: int = 0
    """Chunks that carried output: one token each on vLLM and llama.cpp, which is how the
    gateway estimates the completion tokens of an attempt that never reported usage."""
    tool_calls: bool = False
    other_output: bool = False
    """Reasoning or refusal deltas: output that a text continuation cannot carry on."""
    other_choices: bool = False
    choices_seen: set[int] = field(default_factory=set)
    choices_finished: set[int] = field(default_factory=set)
    broke: str | None = None
    """Why this attempt ended early (stream_cut, stream_stalled, ...), if it did."""

    def observe(self, chunk: Chunk) -> str:
        """Note what one of this attempt's chunks says; return its ``content`` (what it
        adds to the answer's text, which the caller keeps: a continuation's is trimmed)."""
        if self.response_id is None:
            answer_id = chunk.get("id")
            self.response_id = answer_id if isinstance(answer_id, str) else None
        if self.created is None:
            created = chunk.get("created")
            self.created = created if isinstance(created, int) else None
        model = chunk.get("model")
        if isinstance(model, str):
            self.model = model
        if chunk.get("usage") is not None:
            usage = usage_of(chunk["usage"])
            if usage is not None:
                self.usage = usage
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list):
            return ""
        content = ""
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            if index != 0:
                index = index if isinstance(index, int) else 0
                self.other_choices = self.other_choices or index != 0
            self.choices_seen.add(index)
            delta = choice.get("delta")
            if isinstance(delta, dict) and delta:
                text = delta.get("content")
                if text and isinstance(text, str):
                    content += text
                    self.output_chunks += 1
                if not _PLAIN_DELTA.issuperset(delta):  # anything beyond role and text
                    self._observe_other(delta, counted=bool(text))
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
                self.choices_finished.add(index)
        return content

    def _observe_other(self, delta: dict[str, object], *, counted: bool) -> None:
        if any(delta.get(name) for name in _OTHER_OUTPUT):
            self.other_output = True
            if not counted:
                self.output_chunks += 1
        if delta.get("tool_calls"):
            self.tool_calls = True

    @property
    def finished(self) -> bool:
        """Every choice that appeared has its finish reason (with n > 1, one is not enough)."""
        return bool(self.choices_finished) and self.choices_seen <= self.choices_finished

    @property
    def beyond_text(self) -> bool:
        """It holds output that a text continuation could not reproduce."""
        return self.tool_calls or self.other_choices or self.other_output


@dataclass(slots=True)
class AnswerRecord:
    """Everything the gateway knows about one answer, in one place."""

    attempts: list[AttemptRecord] = field(default_factory=list)
    """The attempts that wrote (part of) the answer, in order."""
    failures: list[Failure] = field(default_factory=list)
    """The attempt log: every failed attempt and skipped node, in order. The forwarder
    and continuation write it; headers, spans and the access log read it."""
    text: list[str] = field(default_factory=list)
    """The ``content`` the client was sent, piece by piece (repeats of a continuation
    trimmed): what a continuation goes on from and what a session stores."""

    def start_attempt(
        self, tier: Tier, node: str, form: ContinuationForm | None = None
    ) -> AttemptRecord:
        attempt = AttemptRecord(tier=tier, node=node, form=form, text_from=len(self.text))
        self.attempts.append(attempt)
        return attempt

    @property
    def current(self) -> AttemptRecord:
        return self.attempts[-1]

    @property
    def continued(self) -> bool:
        return len(self.attempts) > 1

    @property
    def id(self) -> str | None:
        """The answer's id: the first attempt's, kept by every continuation."""
        return self.attempts[0].response_id if self.attempts else None

    @property
    def created(self) -> int | None:
        return self.attempts[0].created if self.attempts else None

    @property
    def model(self) -> str | None:
        """The model that wrote the end of the answer (the last one that wrote anything)."""
        for attempt in reversed(self.attempts):
            if attempt.model is not None:
                return attempt.model
        return None

    @property
    def finish_reason(self) -> str | None:
        return self.attempts[-1].finish_reason if self.attempts else None

    @property
    def content(self) -> str:
        return "".join(self.text)

    def text_of(self, attempt: AttemptRecord) -> str:
        """What ``attempt`` added to the answer's text (a repeat it began with trimmed)."""
        position = next(i for i, a in enumerate(self.attempts) if a is attempt)
        later = self.attempts[position + 1 : position + 2]
        return "".join(self.text[attempt.text_from : later[0].text_from if later else None])

    def total_usage(self) -> Usage | None:
        total: Usage | None = None
        for attempt in self.attempts:
            total = add_usage(total, attempt.usage)
        return total

    def usage_by_tier(self) -> list[tuple[Tier, Usage]]:
        """Each attempt's tokens under the tier that spent them (estimated where unreported)."""
        return [(a.tier, a.usage) for a in self.attempts if a.usage is not None]


__all__ = ["AnswerRecord", "AttemptRecord", "ContinuationForm"]
