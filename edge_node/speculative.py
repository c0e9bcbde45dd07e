"""Prompt-lookup decoding: draft tokens taken from a request's own context, verified by the
model in the step that decodes its last token.

Answers that repeat their input (code edited in place, quotations, lists copied with one
change) contain long runs that occur earlier in the prompt or the answer. When the last
few tokens of a sequence (an n-gram of ``min_ngram`` to ``max_ngram`` tokens, longest
first) occurred before, the tokens that followed that occurrence are a good guess for
what comes next. The batching engine (:mod:`edge_node.batching`) decodes the sequence's
last token plus up to ``--draft-tokens`` such guesses in one ``llama_decode``, with
logits at every position, and samples at each position with the request's own sampler
chain, in order, keeping the drafts while each sample equals the draft it verifies.

Why the answer does not change: every emitted token is sampled, by the same chain, from
the logits of a context that holds exactly the tokens emitted before it; a draft only
decides which positions are evaluated in advance. The first sample that differs from its
draft is emitted too (it is what the model would have produced there), the drafts after
it are discarded and their KV cells removed. So greedy answers are token for token the
unspeculated ones, seeded sampling draws the same random numbers in the same order, and
an unseeded request samples from the same distribution. What speculation changes is
cost: a step with k drafts costs more than a step with one token, and saves a whole step
per accepted draft, so it pays only when most drafts are accepted and the CPU kernels
handle several rows for much less than several single-row steps.

This module holds the pure parts: the per-sequence n-gram index that proposes drafts and
the acceptance rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = [
    "MAX_DRAFT_TOKENS",
    "MAX_LOOKUP_NGRAM",
    "SPECULATIVE_METHODS",
    "PromptLookup",
    "SpeculationOptions",
    "SpeculativeMethod",
    "verify_drafts",
]

SpeculativeMethod = Literal["off", "prompt-lookup"]
SPECULATIVE_METHODS: tuple[SpeculativeMethod, ...] = get_args(SpeculativeMethod)

# Beyond these, a step grows by tokens that are almost never all accepted, and the index
# by n-grams that almost never recur.
MAX_DRAFT_TOKENS = 32
MAX_LOOKUP_NGRAM = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeculationOptions:
    """Prompt-lookup settings of the batching engine."""

    draft_tokens: int
    """Most draft tokens one sequence gets per decoding step."""
    max_ngram: int
    """Longest suffix of the context that is looked up."""
    min_ngram: int = 1
    """Shortest suffix that may give a draft (1: a single repeated token suffices)."""

    def __post_init__(self) -> None:
        if not 1 <= self.draft_tokens <= MAX_DRAFT_TOKENS:
            raise ValueError(f"draft_tokens must be in 1..{MAX_DRAFT_TOKENS}")
        if not 1 <= self.min_ngram <= self.max_ngram <= MAX_LOOKUP_NGRAM:
            raise ValueError(f"n-gram sizes must satisfy 1 <= min <= max <= {MAX_LOOKUP_NGRAM}")


class PromptLookup:
    """The n-grams of one sequence's context (prompt + emitted tokens) and where each last
    occurred; proposes the tokens that followed the latest earlier occurrence of the
    context's suffix.

    The index maps every n-gram whose next token is known to the position of that next
    token, updated as tokens are appended (``max_ngram`` dictionary writes per token), so
    a proposal costs ``max_ngram`` look-ups however long the context is. The suffix itself
    is registered only once its next token arrives, so it never matches itself.
    """

    __slots__ = ("_following", "_max_ngram", "_min_ngram", "_tokens")

    def __init__(self, context: Iterable[int], *, max_ngram: int, min_ngram: int = 1) -> None:
        # Sizes as SpeculationOptions validated them (1 <= min_ngram <= max_ngram).
        self._max_ngram = max_ngram
        self._min_ngram = min_ngram
        self._tokens: list[int] = []
        self._following: dict[tuple[int, ...], int] = {}
        self.extend(context)

    def __len__(self) -> int:
        return len(self._tokens)

    def append(self, token: int) -> None:
        """Add the next token of the context (an emitted one: drafts are never added)."""
        tokens, at = self._tokens, len(self._tokens)
        for n in range(1, min(self._max_ngram, at) + 1):
            self._following[tuple(tokens[at - n : at])] = at
        tokens.append(token)

    def extend(self, tokens: Iterable[int]) -> None:
        for token in tokens:
            self.append(token)

    def propose(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the latest earlier occurrence of the
        longest matching suffix (``max_ngram`` down to ``min_ngram`` tokens); empty when
        no suffix occurred before, or ``limit`` is 0."""
        tokens = self._tokens
        end = len(tokens)
        if limit <= 0:
            return []
        for n in range(min(self._max_ngram, end), self._min_ngram - 1, -1):
            start = self._following.get(tuple(tokens[end - n :]))
            if start is not None:
                return tokens[start : start + limit]
        return []


def verify_drafts(drafts: Sequence[int], take: Callable[[int], int | None]) -> int:
    """The acceptance rule; returns how many drafts were accepted.

    ``take(i)`` samples the token at position ``i`` of the verified run (position 0
    follows the sequence's last token, position ``i + 1`` follows ``drafts[i]``), emits it
    and returns it, or returns None when the sequence ended with it (end of generation,
    stop string, max_tokens, cancelled). Positions are taken in order while each sample
    equals the draft at its position; the first sample that differs is taken too (it is
    the model's token there) and ends the run, so ``take`` runs ``accepted + 1`` times.
    """
    for i, draft in enumerate(drafts):
        if take(i) != draft:
            return i
    take(len(drafts))
    return len(drafts)
