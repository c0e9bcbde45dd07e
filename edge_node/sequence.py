"""One running request of the batching engine (:mod:`edge_node.batching`): its place in
the step (tokens still to evaluate, this step's share, its drafts), its own sampler chain
and text assembler, and what happens to each token sampled for it.

The runner owns the batch and the KV cells; a :class:`Sequence` owns the request's side
of a step: it samples from its rows of the step's logits, emits each token to its job
(the first one also reports the prompt evaluated), decides whether the sequence ends
there (end of generation, stop string, max_tokens, cancelled), and, once it ends, says
how (:class:`~edge_node.generation.Finished`). With speculation it samples at its drafts'
rows in order under :func:`edge_node.speculative.verify_drafts`, so each emitted token is
exactly the one it would have been without drafts.

Runs on the engine's worker thread, like the runner.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .generation import Delta, Finished, FinishReason, PromptEvaluated, TextAssembler
from .jobs import Job, JobHost
from .kv_slots import Slot
from .model import ChatModel
from .sampling import SequenceSampler
from .speculative import PromptLookup, verify_drafts

__all__ = ["Ending", "Sequence"]

Ending = tuple[FinishReason, bool]
"""Why a sequence ends at a token: the finish reason, and whether a stop string hit."""


@dataclass(slots=True, eq=False, kw_only=True)
class Sequence:
    """A running request bound to a slot."""

    job: Job
    slot: Slot
    sampler: SequenceSampler
    assembler: TextAssembler
    pending: list[int]  # tokens to evaluate next: the prompt's rest, then the last sample
    prompt_tokens: int
    cached: int
    queue_wait_s: float
    started_at: float
    order: int
    completion: int = 0
    first_token_at: float | None = None
    last_token_at: float = 0.0
    taken: int = 0  # tokens of ``pending`` in the batch being decoded
    held: bool = False  # preempted: waits until another sequence leaves
    lookup: PromptLookup | None = None  # the context's n-grams, with --speculative
    draft: list[int] = field(default_factory=list)  # guesses after pending[0], this step

    def sample(self, ctx: object, row: int, model: ChatModel, host: JobHost) -> Ending | None:
        """Sample at ``row`` of the step's logits and emit the token; None while the
        sequence goes on (the token is then the next one to evaluate), else why it ends."""
        token = self.sampler.sample(ctx, row)
        ending = self.emit(token, model, host)
        if ending is None:
            self.pending = [token]
        return ending

    def verify(
        self, ctx: object, row: int, model: ChatModel, host: JobHost
    ) -> tuple[int, Ending | None]:
        """Sample at the last token's row and each draft's in turn while the samples match
        the drafts (:func:`edge_node.speculative.verify_drafts`); returns how many drafts
        were accepted and, if the sequence ended, why. The caller removes the cells of the
        drafts that were not accepted."""
        endings: list[Ending] = []

        def take(i: int) -> int | None:
            ending = self.sample(ctx, row + i, model, host)
            if ending is not None:
                endings.append(ending)
                return None
            return self.pending[0]  # the token sampled: the next one to evaluate

        accepted = verify_drafts(self.draft, take)
        return accepted, endings[0] if endings else None

    def emit(self, token: int, model: ChatModel, host: JobHost) -> Ending | None:
        """Emit a sampled token; None while the sequence goes on, else why it ends."""
        job = self.job
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
            prompt_eval_s = now - self.started_at
            host.emit(job, PromptEvaluated(cached_tokens=self.cached, prompt_eval_s=prompt_eval_s))
        self.last_token_at = now
        if job.cancelled.is_set():
            return "cancelled", False
        if model.is_end_of_generation(token) and not job.params.ignore_eos:
            return "stop", False
        self.completion += 1
        text, stopped = self.assembler.feed(model.piece(token))
        if text:
            host.emit(job, Delta(text=text))
        if stopped:
            return "stop", True
        if self.completion >= job.params.max_tokens:
            return "length", False
        if self.lookup is not None:
            self.lookup.append(token)
        return None

    def finished(self, reason: FinishReason, stop_sequence_hit: bool, host: JobHost) -> Finished:
        """Emit the text held back as a possible stop prefix (unless cancelled or a stop
        string hit) and return the sequence's last event."""
        if reason != "cancelled" and not stop_sequence_hit:
            tail = self.assembler.flush()  # held back as a possible stop prefix
            if tail:
                host.emit(self.job, Delta(text=tail))
        first = self.first_token_at
        return Finished(
            finish_reason=reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion,
            cached_tokens=self.cached,
            prompt_eval_s=None if first is None else first - self.started_at,
            decode_s=0.0 if first is None else self.last_token_at - first,
        )
