"""Prompt (KV) cache: reuse evaluated prompt prefixes across turns and conversations.

llama.cpp keeps one live KV state per context, and ``Llama.generate`` already reuses
the part of it that the next prompt shares. That covers a conversation whose turns
arrive back to back. When conversations interleave, the live state is overwritten, so
before it is cut this module saves it into an LRU of snapshots (``PromptCache``) and,
for each prompt, restores the snapshot sharing the longest prefix when that beats the
live state.

Why not ``llama_cpp.LlamaRAMCache``: its entries also copy the ``scores`` array
(n_batch x n_vocab float32, ~100 MB for SmolLM2 at n_batch 512) that is only used for
logprobs, which its byte accounting ignores; and it snapshots after every request
rather than only when a state is about to be lost.

Everything here runs on the engine's worker thread.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Tokens = npt.NDArray[np.intc]
ReuseSource = Literal["none", "live", "saved"]


def common_prefix(a: Tokens, b: Tokens) -> int:
    """Length of the longest common prefix of two token arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    mismatch = np.flatnonzero(a[:n] != b[:n])
    return int(mismatch[0]) if mismatch.size else n


@dataclass(frozen=True, slots=True, kw_only=True)
class SavedState:
    """A KV snapshot and the tokens it holds."""

    tokens: Tokens
    data: bytes

    @property
    def nbytes(self) -> int:
        return len(self.data) + self.tokens.nbytes


class PromptCache:
    """LRU of KV snapshots bounded in bytes, looked up by longest common token prefix."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[int, SavedState] = OrderedDict()
        self._next_key = 0
        self.size_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def longest_prefix(self, tokens: Tokens) -> tuple[SavedState | None, int]:
        """The entry sharing the most leading tokens with ``tokens`` (marked recently used)."""
        best_key, best_len = -1, 0
        for key, entry in self._entries.items():
            length = common_prefix(entry.tokens, tokens)
            if length > best_len:
                best_key, best_len = key, length
        if best_key < 0:
            return None, 0
        self._entries.move_to_end(best_key)
        return self._entries[best_key], best_len

    def put(self, state: SavedState) -> None:
        """Store a snapshot; drops entries it extends, then the least recently used ones."""
        if state.nbytes > self.capacity_bytes:
            return
        # An entry whose tokens are a prefix of the new one can only ever lose to it.
        for key in [
            k
            for k, e in self._entries.items()
            if common_prefix(e.tokens, state.tokens) == len(e.tokens)
        ]:
            self.size_bytes -= self._entries.pop(key).nbytes
        self._entries[self._next_key] = state
        self._next_key += 1
        self.size_bytes += state.nbytes
        while self.size_bytes > self.capacity_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.size_bytes -= evicted.nbytes


class PromptReuse:
    """Prepares the llama.cpp context so that each prompt starts from its longest cached prefix."""

    def __init__(self, llm: Any, cache: PromptCache | None) -> None:
        self._llm = llm
        self.cache = cache
        self._unsaved = False  # the live state holds tokens no snapshot has

    def prepare(self, prompt: list[int]) -> tuple[int, ReuseSource]:
        """Load the best KV state for ``prompt``; returns how many prompt tokens it spares."""
        llm = self._llm
        wanted = np.asarray(prompt, dtype=np.intc)
        live = np.asarray(llm.input_ids[: llm.n_tokens], dtype=np.intc)
        reused = common_prefix(live, wanted)
        source: ReuseSource = "live"
        if self.cache is not None:
            if self._unsaved and reused < len(live):
                # generate() is about to truncate the live state: keep a copy for later turns.
                self.cache.put(SavedState(tokens=live.copy(), data=_snapshot(llm)))
                self._unsaved = False
            saved, saved_len = self.cache.longest_prefix(wanted)
            if saved is not None and saved_len > reused:
                _restore(llm, saved)
                reused, source = saved_len, "saved"
        # Llama.generate re-evaluates the last prompt token when the whole prompt is
        # cached (it needs fresh logits), so at most len(prompt) - 1 are really reused.
        reused = min(reused, len(prompt) - 1)
        return reused, source if reused > 0 else "none"

    def mark_generated(self) -> None:
        """The live state changed (a generation ran), so it is not in the cache."""
        self._unsaved = True


def _snapshot(llm: Any) -> bytes:
    from llama_cpp import llama_cpp

    size = llama_cpp.llama_state_get_size(llm.ctx)
    buffer = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_get_data(llm.ctx, buffer, size)
    return bytes(memoryview(buffer)[:written])


def _restore(llm: Any, saved: SavedState) -> None:
    from llama_cpp import llama_cpp

    size = len(saved.data)
    buffer = (ctypes.c_uint8 * size).from_buffer_copy(saved.data)
    if llama_cpp.llama_state_set_data(llm.ctx, buffer, size) != size:
        raise RuntimeError("llama.cpp refused to restore a saved KV state")
    n = len(saved.tokens)
    llm.input_ids[:n] = saved.tokens
    llm.n_tokens = n
    # Same bookkeeping as Llama.load_state: restored logits are not trusted for sampling.
    llm._requires_eval = True
