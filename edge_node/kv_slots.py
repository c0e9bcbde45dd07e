"""The sequences of the batched llama.cpp context: who holds which KV cells, and prefix reuse.

The batching engine creates one context with ``n_seq_max = --parallel`` sequences and
``--kv-cells`` cells: one stream of ``kv-cells / parallel`` per sequence, or with
``--kv-unified`` one pool they share. Each running request owns one sequence id (a
*slot*). When it finishes, its slot keeps the KV cells of its prompt and answer, so the
conversation's next turn, which starts with exactly those tokens, reuses them: a new
prompt goes to the idle slot sharing its longest prefix, and only the rest is evaluated.

Kept cells are a cache, not a reservation: when the shared pool runs short the least
recently used idle slot is emptied, and when a slot's cells are about to be lost
(emptied, or cut back to the prefix a new prompt shares) they are first snapshotted into
the RAM prompt cache (:class:`edge_node.prompt_cache.PromptCache`, ``--prompt-cache-mb``)
with ``llama_state_seq_get_data``. A prompt that shares more with a snapshot than with any idle
slot gets the snapshot restored into its slot (``llama_state_seq_set_data``). So
interleaved conversations keep their prefixes as the one-at-a-time engine's live state and
snapshots did. A cancelled request's cells are freed at once.

Everything here runs on the engine's worker thread.
"""

from __future__ import annotations

import ctypes
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .prompt_cache import PromptCache, ReuseSource, SavedState, common_prefix


@dataclass(slots=True, kw_only=True)
class Slot:
    """One llama.cpp sequence id and the tokens whose KV cells it holds, in position order."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    busy: bool = False
    unsaved: bool = False  # holds tokens that no snapshot in the RAM cache has
    last_used: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Reuse:
    """Where a new sequence starts: its slot and how many prompt tokens are already in KV."""

    slot: Slot
    cached: int
    source: ReuseSource


class KvSlots:
    """The slots of one batched context and the KV cell accounting over them."""

    def __init__(
        self,
        ctx: Any,
        n_slots: int,
        total_cells: int,
        cache: PromptCache | None,
        *,
        shared: bool,
    ) -> None:
        from llama_cpp import llama_cpp

        self._lib = llama_cpp
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self.total_cells = total_cells
        # A shared pool (--kv-unified) is what running sequences compete for; with one
        # stream per sequence every slot owns its window's cells and nothing is short.
        self.shared = shared
        self.cache = cache
        self._slots = [Slot(seq_id=i) for i in range(n_slots)]
        self._clock = itertools.count(1)
        llama_cpp.llama_memory_clear(self._mem, True)

    # -- accounting ----------------------------------------------------------------

    def idle_count(self) -> int:
        return sum(not slot.busy for slot in self._slots)

    def cells(self) -> tuple[int, int]:
        """(cells held by running sequences, cells kept by idle slots for reuse)."""
        running = sum(len(s.tokens) for s in self._slots if s.busy)
        kept = sum(len(s.tokens) for s in self._slots if not s.busy)
        return running, kept

    def free_cells(self) -> int:
        """Cells no slot holds in the shared pool (per-sequence streams: all of them)."""
        if not self.shared:
            return self.total_cells
        running, kept = self.cells()
        return self.total_cells - running - kept

    # -- lifecycle -------------------------------------------------------------------

    def acquire(self, prompt: list[int]) -> Reuse:
        """Take the idle slot best placed for ``prompt`` and load its longest cached prefix.

        The caller has checked that a slot is idle. At most ``len(prompt) - 1`` tokens
        are reused: the last prompt token is always evaluated, for its logits.
        """
        wanted = np.asarray(prompt, dtype=np.intc)
        saved, saved_len = (None, 0) if self.cache is None else self.cache.longest_prefix(wanted)
        reused, slot = self._choose(wanted, saved_len)
        source: ReuseSource = "live"
        if reused < len(slot.tokens):
            self._save(slot)  # about to be cut back to the shared prefix
        if saved is not None and saved_len > reused:
            # A failed restore has emptied the slot: nothing of it is reused then.
            restored = self._restore(slot, saved)
            reused, source = (saved_len, "saved") if restored else (0, "none")
        reused = min(reused, len(prompt) - 1)
        self._truncate(slot, reused)
        slot.busy, slot.unsaved, slot.last_used = True, True, next(self._clock)
        return Reuse(slot=slot, cached=reused, source=source if reused > 0 else "none")

    def _choose(self, wanted: npt.NDArray[np.intc], saved_len: int) -> tuple[int, Slot]:
        """The idle slot for a prompt, and how many of its tokens the prompt shares.

        With the RAM cache on, the slot giving the longest prefix wins, counting the
        ``saved_len`` tokens that the cache's best snapshot would restore into any slot;
        among equals the slot that keeps the running sequences' ids consecutive (see
        :meth:`_passes_with`), then the one sharing the most itself where that spares the
        restore, then an empty one, then the least recently used: a new conversation
        reuses the system prompt another one left, and what it cuts off that one is
        snapshotted first, to be restored if that conversation comes back. Without the
        cache a cut would be lost, so a slot the prompt mostly continues (the same
        conversation) comes first, else an empty slot (the one keeping ids consecutive),
        else the least recently used one.
        """
        idle = [slot for slot in self._slots if not slot.busy]
        scored = [(common_prefix(np.asarray(s.tokens, dtype=np.intc), wanted), s) for s in idle]
        if self.cache is not None:
            return max(
                scored,
                key=lambda p: (
                    max(p[0], saved_len),
                    -self._passes_with(p[1]),
                    p[0] if p[0] >= saved_len else 0,  # what it spares restoring
                    not p[1].tokens,
                    -p[1].last_used,
                ),
            )
        continuing = [(n, s) for n, s in scored if n > 0 and 2 * n >= len(s.tokens)]
        if continuing:
            return max(continuing, key=lambda pair: pair[0])
        empty = [(n, s) for n, s in scored if not s.tokens]
        if empty:
            return min(empty, key=lambda pair: self._passes_with(pair[1]))
        return min(scored, key=lambda pair: pair[1].last_used)

    def _passes_with(self, slot: Slot) -> int:
        """How many passes over the weights a step of the busy slots plus ``slot`` takes.

        With one KV stream per sequence, llama.cpp splits a batch into micro-batches of
        consecutive sequence ids (``llama_batch_allocr::split_equal``), each a whole pass:
        running ids 0, 1, 2, 3 decode in one pass, 0, 2, 5, 7 in four, which is most of
        the step (measured with SmolLM2 untied Q4_0, 2 threads: 4 sequences 5.8 ms in one
        pass, 14.6 ms in four). So among slots otherwise equal, the one next to running
        sequences is taken. A shared pool (``--kv-unified``) decodes any batch in one pass.
        """
        if self.shared:
            return 1
        ids = {s.seq_id for s in self._slots if s.busy} | {slot.seq_id}
        return sum(1 for i in ids if i - 1 not in ids)

    def release(self, slot: Slot, *, keep: bool) -> None:
        """The sequence left: keep its cells for the next turn, or free them at once."""
        slot.busy = False
        slot.last_used = next(self._clock)
        if not keep:
            self._truncate(slot, 0)
            slot.unsaved = False

    def clear(self, slot: Slot) -> None:
        """Free a busy slot's cells without giving the slot up (a preempted sequence)."""
        self._truncate(slot, 0)
        slot.unsaved = False

    def trim(self, slot: Slot, keep: int) -> None:
        """Free a busy slot's cells past its first ``keep`` tokens (rejected drafts)."""
        self._truncate(slot, keep)

    def evict_one(self) -> bool:
        """Empty the least recently used idle slot that holds cells (snapshotting it first);
        False when no idle slot holds any."""
        holders = [slot for slot in self._slots if not slot.busy and slot.tokens]
        if not holders:
            return False
        slot = min(holders, key=lambda s: s.last_used)
        self._save(slot)
        self._truncate(slot, 0)
        return True

    def make_room(self, cells: int) -> None:
        """Evict idle slots until ``cells`` are free (or nothing idle is left to evict)."""
        while self.free_cells() < cells and self.evict_one():
            pass

    # -- llama.cpp -----------------------------------------------------------------

    def _truncate(self, slot: Slot, keep: int) -> None:
        if keep < len(slot.tokens):
            self._lib.llama_memory_seq_rm(self._mem, slot.seq_id, keep, -1)
            del slot.tokens[keep:]

    def _save(self, slot: Slot) -> None:
        if self.cache is None or not slot.unsaved or not slot.tokens:
            return
        size = self._lib.llama_state_seq_get_size(self._ctx, slot.seq_id)
        buffer = (ctypes.c_uint8 * size)()
        written = self._lib.llama_state_seq_get_data(self._ctx, buffer, size, slot.seq_id)
        if written:
            tokens = np.asarray(slot.tokens, dtype=np.intc)
            self.cache.put(SavedState(tokens=tokens, data=bytes(memoryview(buffer)[:written])))
        slot.unsaved = False

    def _restore(self, slot: Slot, saved: SavedState) -> bool:
        """Replace the slot's cells by a snapshot's; False when llama.cpp finds no room."""
        self._truncate(slot, 0)
        self.make_room(len(saved.tokens))
        size = len(saved.data)
        buffer = (ctypes.c_uint8 * size).from_buffer_copy(saved.data)
        if self._lib.llama_state_seq_set_data(self._ctx, buffer, size, slot.seq_id) != size:
            self._lib.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            return False
        slot.tokens = [int(t) for t in saved.tokens]
        return True
