"""One generation on the worker thread: the token loop, text assembly and its events.

The loop drives ``Llama.generate`` token by token (rather than ``create_chat_completion``)
so that it can stop at the next token when the client leaves, count tokens exactly
for ``usage`` in streams too, and time the phases (queue wait, prompt evaluation,
decode) that become trace spans later.
"""

from __future__ import annotations

import codecs
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .model import ChatModel
from .prompt_cache import PromptReuse
from .schema import Sampling

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationParams:
    """A tokenized, context-checked request ready for the model."""

    prompt_tokens: tuple[int, ...]
    max_tokens: int
    stop: tuple[str, ...]
    sampling: Sampling
    ignore_eos: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Started:
    """The worker picked the job up: the queue-wait phase ends."""

    queue_wait_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PromptEvaluated:
    """The first token was sampled: the prompt-evaluation phase ends."""

    cached_tokens: int
    prompt_eval_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Delta:
    """Generated text, ready to send."""

    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished:
    """The generation ended; always the last event of a job that ran."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    prompt_eval_s: float | None
    decode_s: float


Emit = Callable[[Started | PromptEvaluated | Delta], None]


class TextAssembler:
    """Turns token bytes into text, holding back incomplete UTF-8 and possible stop prefixes."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = stop
        self._pending = ""

    def feed(self, data: bytes) -> tuple[str, bool]:
        """Add token bytes; returns (text safe to send, whether a stop sequence was hit)."""
        self._pending += self._decoder.decode(data)
        if not self._stop:
            text, self._pending = self._pending, ""
            return text, False
        hits = [i for i in (self._pending.find(s) for s in self._stop) if i >= 0]
        if hits:
            text = self._pending[: min(hits)]
            self._pending = ""
            return text, True
        keep = max((_overlap(self._pending, s) for s in self._stop), default=0)
        cut = len(self._pending) - keep
        text, self._pending = self._pending[:cut], self._pending[cut:]
        return text, False

    def flush(self) -> str:
        """The text held back at the end of a generation that hit no stop sequence."""
        text = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return text


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    for length in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:length]):
            return length
    return 0


def run_generation(
    model: ChatModel,
    reuse: PromptReuse,
    params: GenerationParams,
    cancelled: threading.Event,
    emit: Emit,
) -> Finished:
    """Generate one completion: emits PromptEvaluated and Deltas, returns the Finished event."""
    llm = model.llm
    started = time.perf_counter()
    prompt = list(params.prompt_tokens)
    cached, _ = reuse.prepare(prompt)
    sampling = params.sampling
    llm.set_seed(sampling.seed % 2**32 if sampling.seed is not None else secrets.randbits(32))
    assembler = TextAssembler(params.stop)
    completion = 0
    finish: FinishReason = "length"
    stop_sequence_hit = False
    first_token_at: float | None = None
    last_token_at = started
    tokens = llm.generate(
        prompt,
        temp=sampling.temperature,
        top_p=sampling.top_p,
        presence_penalty=sampling.presence_penalty,
        frequency_penalty=sampling.frequency_penalty,
    )
    try:
        if cancelled.is_set():
            finish = "cancelled"
        else:
            for token in tokens:
                last_token_at = time.perf_counter()
                if first_token_at is None:
                    first_token_at = last_token_at
                    emit(
                        PromptEvaluated(
                            cached_tokens=cached, prompt_eval_s=first_token_at - started
                        )
                    )
                if cancelled.is_set():
                    finish = "cancelled"
                    break
                if model.is_end_of_generation(token) and not params.ignore_eos:
                    finish = "stop"
                    break
                completion += 1
                text, stopped = assembler.feed(model.piece(token))
                if text:
                    emit(Delta(text=text))
                if stopped:
                    finish, stop_sequence_hit = "stop", True
                    break
                if completion >= params.max_tokens:
                    break
    finally:
        reuse.mark_generated()
        tokens.close()
    if finish != "cancelled" and not stop_sequence_hit:
        tail = assembler.flush()  # text held back as a possible stop prefix that never completed
        if tail:
            emit(Delta(text=tail))
    return Finished(
        finish_reason=finish,
        prompt_tokens=len(prompt),
        completion_tokens=completion,
        cached_tokens=cached,
        prompt_eval_s=(first_token_at - started) if first_token_at is not None else None,
        decode_s=(last_token_at - first_token_at) if first_token_at is not None else 0.0,
    )
