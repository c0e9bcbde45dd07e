"""Continuous batching: up to ``--parallel`` requests share one llama.cpp context, and each
decoding step is one ``llama_decode`` over one ``llama_batch`` holding every running
sequence's next token.

Between steps the runner takes new jobs off the admission queue, drops the ones whose
client left (their KV cells are freed at once), and gives waiting jobs the idle slots
(:mod:`edge_node.kv_slots`, which also reuses cached prompt prefixes). A new prompt joins
the running batch in chunks: while other sequences are decoding, at most
``--prefill-chunk`` prompt tokens go into a step, so a long prompt delays everyone's next
token by one chunk's worth of work, not by the whole prompt; with nobody decoding it takes
up to ``--n-batch`` tokens per step. Each sequence samples from its own row of the step's
logits with its own sampler chain (:mod:`edge_node.sampling`), so temperature, top_p,
penalties, seed, stop sequences and max_tokens are per request.

By default every sequence has its own stream of KV cells, a whole context window, so
cells never run short. With ``--kv-unified`` the sequences share one pool; when it runs
short, idle slots' cached prefixes go first (LRU, snapshotted into the RAM prompt cache);
if running sequences alone need more cells than there are, the most recently started one
is preempted: its cells are freed and its prompt
plus what it has generated so far is evaluated again when cells are free (its client sees
only a pause; sampling continues where it was).

With ``--speculative prompt-lookup`` a decoding sequence's step also carries up to
``--draft-tokens`` tokens guessed from its own context (:mod:`edge_node.speculative`),
with logits at each; the sequence samples at each position in order while the samples
match the guesses, so one step can emit several tokens, each exactly as it would have
been emitted alone, and the cells of the rejected guesses are removed. What a sequence
does with its rows of a step's logits is :mod:`edge_node.sequence`.

Runs on the engine's worker thread, which owns the model.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .errors import GenerationFailed
from .generation import Finished, FinishReason, TextAssembler
from .jobs import Failed, Job, JobHost
from .kv_slots import KvSlots
from .model import ChatModel
from .prompt_cache import PromptCache
from .sampling import SequenceSampler
from .sequence import Sequence
from .speculative import PromptLookup, SpeculationOptions

log = logging.getLogger(__name__)

_DECODE_NO_KV_ROOM = 1  # llama_decode: "could not find a KV slot for the batch"


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchOptions:
    parallel: int
    kv_cells: int
    n_batch: int
    prefill_chunk: int
    prompt_cache_bytes: int
    shared_kv: bool
    speculation: SpeculationOptions | None = None


class BatchRunner:
    """Runs the decoding loop until the ``None`` sentinel and every sequence has left."""

    kind = "batched"

    def __init__(
        self,
        model: ChatModel,
        host: JobHost,
        options: BatchOptions,
        on_step: Callable[[], None] = lambda: None,
        on_preempt: Callable[[], None] = lambda: None,
        on_draft: Callable[[int, int], None] = lambda drafted, accepted: None,
    ) -> None:
        from llama_cpp import llama_cpp

        self._lib = llama_cpp
        self._model = model
        self._host = host
        self._options = options
        self._ctx = model.llm.ctx
        cache = PromptCache(options.prompt_cache_bytes) if options.prompt_cache_bytes else None
        self.slots = KvSlots(
            self._ctx, options.parallel, options.kv_cells, cache, shared=options.shared_kv
        )
        self._batch = llama_cpp.llama_batch_init(options.n_batch, 0, 1)
        self._running: list[Sequence] = []
        self._waiting: deque[Job] = deque()
        self._admitted = 0
        self._on_step = on_step
        self._on_preempt = on_preempt
        self._on_draft = on_draft

    @property
    def cache(self) -> PromptCache | None:
        return self.slots.cache

    @property
    def running(self) -> int:
        return len(self._running)

    def kv_cells(self) -> tuple[int, int]:
        return self.slots.cells()

    # -- the loop ------------------------------------------------------------------

    def run(self, jobs: queue.SimpleQueue[Job | None]) -> None:
        closing = False
        try:
            while True:
                block = not self._running and not closing
                closing = self._collect(jobs, block=block) or closing
                self._drop_cancelled()
                self._admit()
                if not self._running:
                    if closing and not self._waiting:
                        return
                    continue
                self._step()
        finally:
            self._lib.llama_batch_free(self._batch)

    def _collect(self, jobs: queue.SimpleQueue[Job | None], *, block: bool) -> bool:
        """Move newly admitted jobs to the waiting line; True on the shutdown sentinel."""
        try:
            job = jobs.get() if block and not self._waiting else jobs.get_nowait()
            while True:
                if job is None:
                    return True
                self._waiting.append(job)
                job = jobs.get_nowait()
        except queue.Empty:
            return False

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._running if s.job.cancelled.is_set()]:
            self._finish(seq, "cancelled")

    def _admit(self) -> None:
        """Give waiting jobs idle slots, first come first served, while their prompts fit
        in the cells that running sequences do not hold."""
        if any(seq.held for seq in self._running):
            return  # cells are short: preempted sequences resume first
        while self._waiting and self.slots.idle_count():
            job = self._waiting[0]
            running_cells, _ = self.slots.cells()
            if (
                self.slots.shared
                and self._running
                and len(job.params.prompt_tokens) > (self.slots.total_cells - running_cells)
            ):
                return  # wait for cells (later jobs wait too: first come, first served)
            self._waiting.popleft()
            queue_wait_s = self._host.begin(job)
            if queue_wait_s is None:
                continue  # cancelled while waiting
            self._start(job, queue_wait_s)

    def _start(self, job: Job, queue_wait_s: float) -> None:
        prompt = list(job.params.prompt_tokens)
        reuse = self.slots.acquire(prompt)
        self._admitted += 1
        spec = self._options.speculation
        lookup = None
        if spec is not None:
            lookup = PromptLookup(prompt, max_ngram=spec.max_ngram, min_ngram=spec.min_ngram)
        self._running.append(
            Sequence(
                job=job,
                slot=reuse.slot,
                sampler=SequenceSampler(self._model.n_vocab, job.params.sampling),
                assembler=TextAssembler(job.params.stop),
                pending=prompt[reuse.cached :],
                prompt_tokens=len(prompt),
                cached=reuse.cached,
                queue_wait_s=queue_wait_s,
                started_at=time.perf_counter(),
                order=self._admitted,
                lookup=lookup,
            )
        )
        self._host.kv_changed()

    # -- one decoding step -------------------------------------------------------------

    def _step(self) -> None:
        while True:
            planned = self._plan()
            if not planned:
                return
            code = self._decode(planned)
            if code == 0:
                break
            if code == _DECODE_NO_KV_ROOM and self._shed():
                continue  # room was made: plan the step again
            self._fail(planned, f"llama_decode returned {code}")
            return
        self._on_step()
        self._after_decode(planned)
        self._host.flush()

    def _active(self) -> list[Sequence]:
        """Running sequences not waiting after a preemption, oldest first."""
        return sorted((s for s in self._running if not s.held), key=lambda s: s.order)

    def _plan(self) -> list[Sequence]:
        """Choose this step's tokens: every decoding sequence's next one, then prompt
        chunks first come first served, within --n-batch and the free KV cells. The
        youngest sequences are preempted while the decoding ones do not fit, and the oldest
        always gets a token (it fits alone: its window is at most the whole pool)."""
        options = self._options
        while True:
            active = self._active()
            for seq in self._running:
                seq.taken, seq.draft = 0, []
            decoding = [s for s in active if len(s.pending) == 1]
            self.slots.make_room(len(decoding))
            if self.slots.free_cells() < len(decoding) and self._preempt_youngest():
                continue
            planned: list[Sequence] = []
            for seq in decoding[: self.slots.free_cells()]:
                seq.taken = 1
                planned.append(seq)
            used = len(planned) + self._draft(planned, options.n_batch - len(planned))
            chunk = min(
                options.n_batch - used, options.prefill_chunk if planned else options.n_batch
            )
            for seq in active:
                if len(seq.pending) == 1 or chunk <= 0:
                    continue
                want = min(len(seq.pending), chunk)
                self.slots.make_room(used + want)
                take = min(want, self.slots.free_cells() - used)
                if take <= 0:
                    break
                seq.taken = take
                used += take
                chunk -= take
                planned.append(seq)
            if planned or not self._preempt_youngest():
                break
        if not planned and active:
            self._fail(active, "the KV cache cannot hold this sequence (raise --kv-cells)")
        # With one KV stream per sequence llama.cpp splits a batch into micro-batches whose
        # sequence ids run consecutively (llama_batch_allocr::split_equal), and each
        # micro-batch is a whole pass over the weights: batch order 3, 0, 2, 1 costs four
        # passes, 0, 1, 2, 3 one.
        planned.sort(key=lambda s: s.slot.seq_id)
        return planned

    def _draft(self, decoding: list[Sequence], room: int) -> int:
        """Give decoding sequences prompt-lookup drafts, oldest first, within ``room``
        batch tokens and (shared pool) the free cells; returns how many were given.

        Drafts never reach past max_tokens (they could not be emitted), and so never past
        the sequence's window, which holds its prompt plus max_tokens.
        """
        spec = self._options.speculation
        if spec is None:
            return 0
        if self.slots.shared:  # drafts take only free cells: no cached prefix is evicted
            room = min(room, self.slots.free_cells() - len(decoding))
        given = 0
        for seq in decoding:
            left = seq.job.params.max_tokens - seq.completion - 1
            limit = min(spec.draft_tokens, left, room - given)
            if limit > 0 and seq.lookup is not None:
                seq.draft = seq.lookup.propose(limit)
                given += len(seq.draft)
        return given

    def _shed(self) -> bool:
        """llama.cpp found no room for the batch (fragmented or over-committed cells):
        evict an idle slot's cache, else preempt the youngest sequence. False if neither
        is possible."""
        return self.slots.evict_one() or self._preempt_youngest()

    def _preempt_youngest(self) -> bool:
        """Free the youngest active sequence's cells; it evaluates its tokens again after
        another sequence leaves. False when only one sequence is active."""
        active = self._active()
        if len(active) < 2:
            return False
        seq = active[-1]
        log.info("KV cells exhausted: preempting a sequence holding %d", len(seq.slot.tokens))
        seq.pending = seq.slot.tokens + seq.pending
        self.slots.clear(seq.slot)
        seq.held, seq.taken = True, 0
        self._on_preempt()
        return True

    def _decode(self, planned: list[Sequence]) -> int:
        batch = self._batch
        i = 0
        for seq in planned:
            start = len(seq.slot.tokens)
            last = seq.taken == len(seq.pending)
            # Logits for the last token and, to verify them, after every draft.
            for j, token in enumerate(seq.pending[: seq.taken] + seq.draft):
                batch.token[i] = token
                batch.pos[i] = start + j
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq.slot.seq_id
                batch.logits[i] = last and j >= seq.taken - 1
                i += 1
        batch.n_tokens = i
        return int(self._lib.llama_decode(self._ctx, batch))

    def _after_decode(self, planned: list[Sequence]) -> None:
        row = 0
        for seq in planned:
            tokens = seq.pending[: seq.taken]
            seq.slot.tokens.extend(tokens)
            del seq.pending[: seq.taken]
            row += seq.taken
            if seq.draft:
                self._verify(seq, row - 1)
                row += len(seq.draft)
            elif not seq.pending:
                self._sample(seq, row - 1)
        self._host.kv_changed()

    def _sample(self, seq: Sequence, row: int) -> None:
        ending = seq.sample(self._ctx, row, self._model, self._host)
        if ending is not None:
            self._finish(seq, *ending)

    def _verify(self, seq: Sequence, row: int) -> None:
        """Let the sequence verify its drafts (:meth:`Sequence.verify`) and remove the
        cells of the drafts that were not accepted."""
        verified = len(seq.slot.tokens)  # cells of emitted tokens: the last one included
        seq.slot.tokens.extend(seq.draft)
        accepted, ending = seq.verify(self._ctx, row, self._model, self._host)
        self.slots.trim(seq.slot, verified + accepted)
        self._on_draft(len(seq.draft), accepted)
        if ending is not None:
            self._finish(seq, *ending)

    # -- leaving -------------------------------------------------------------------

    def _finish(self, seq: Sequence, reason: FinishReason, stop_sequence_hit: bool = False) -> None:
        finished = seq.finished(reason, stop_sequence_hit, self._host)
        self._leave(seq, finished, keep_cells=reason != "cancelled")

    def _fail(self, planned: list[Sequence], reason: str) -> None:
        log.error("decoding step failed (%s); ending its %d sequences", reason, len(planned))
        error = GenerationFailed(f"Generation failed: {reason}")
        for seq in planned:
            self._leave(seq, Failed(error=error), keep_cells=False)

    def _leave(self, seq: Sequence, last: Finished | Failed, *, keep_cells: bool) -> None:
        seq.sampler.close()
        self._running.remove(seq)
        for other in self._running:
            other.held = False  # cells were freed: preempted sequences may resume
        self.slots.release(seq.slot, keep=keep_cells)
        self._host.kv_changed()
        self._host.finish(seq.job, last, seq.queue_wait_s)
