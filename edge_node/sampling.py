"""One llama.cpp sampler chain per sequence, built like ``Llama.generate``'s.

The batched engine decodes many requests in one ``llama_decode``; each keeps its own
chain (its own temperature, top_p, penalties and random state), sampled from its own
row of the batch's logits. The chain is the one llama-cpp-python's ``Llama._init_sampler``
builds with the node's defaults (top_k 40, typical_p 1, min_p 0.05, the last 64 tokens
for the penalties), so a request samples from the same distribution on either engine,
and a request with a ``seed`` gets the same tokens on either.

Owned by the engine's worker thread; ``close()`` frees the native chain.
"""

from __future__ import annotations

import secrets
from typing import Any

from .schema import Sampling

_TOP_K = 40
_TYPICAL_P = 1.0
_MIN_P = 0.05
_PENALTY_LAST_N = 64  # Llama's last_n_tokens_size default
_MIN_KEEP = 1


def sampling_seed(sampling: Sampling) -> int:
    """The request's seed as llama.cpp takes it (32 bits), or a fresh random one."""
    return sampling.seed % 2**32 if sampling.seed is not None else secrets.randbits(32)


class SequenceSampler:
    """A sampler chain for one sequence; ``sample(ctx, i)`` reads row ``i`` of the last batch."""

    def __init__(self, n_vocab: int, sampling: Sampling) -> None:
        from llama_cpp import llama_cpp

        self._lib = llama_cpp
        chain: Any = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params()
        )
        self._chain: Any = chain

        def add(sampler: Any) -> None:
            llama_cpp.llama_sampler_chain_add(chain, sampler)

        add(
            llama_cpp.llama_sampler_init_penalties(
                n_vocab,
                _PENALTY_LAST_N,
                1.0,  # repeat penalty: off, as in the serial engine
                sampling.frequency_penalty,
                sampling.presence_penalty,
            )
        )
        if sampling.temperature == 0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            add(llama_cpp.llama_sampler_init_top_k(_TOP_K))
            add(llama_cpp.llama_sampler_init_typical(_TYPICAL_P, _MIN_KEEP))
            add(llama_cpp.llama_sampler_init_top_p(sampling.top_p, _MIN_KEEP))
            add(llama_cpp.llama_sampler_init_min_p(_MIN_P, _MIN_KEEP))
            add(llama_cpp.llama_sampler_init_temp(sampling.temperature))
            add(llama_cpp.llama_sampler_init_dist(sampling_seed(sampling)))

    def sample(self, ctx: Any, index: int) -> int:
        """Sample from the logits of batch row ``index`` (and record the token for the
        penalties: ``llama_sampler_sample`` accepts what it returns)."""
        return int(self._lib.llama_sampler_sample(self._chain, ctx, index))

    def close(self) -> None:
        if self._chain is not None:
            self._lib.llama_sampler_free(self._chain)
            self._chain = None
