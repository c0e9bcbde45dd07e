"""Labelled examples as arrays: the runtime's features, the outcomes, the length baseline."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.routing.features import extract_features
from gateway.routing.training.data import Example
from gateway.tokens import count_tokens
from hybrid_common.protocol import message_text

Array = npt.NDArray[np.float64]
Rows = npt.NDArray[np.intp]


@dataclass(frozen=True, slots=True, kw_only=True)
class Dataset:
    dense: Array
    """One row per example, aligned with ``FEATURE_NAMES``; NaN where a feature does not apply."""
    words: list[frozenset[str]]
    edge: Array
    cloud: Array
    domains: npt.NDArray[np.str_] | None
    lengths: Array
    """Prompt length in tokens (tiktoken, exact): the length router's score."""
    keys: list[str]

    @property
    def gain(self) -> Array:
        return self.cloud - self.edge

    def __len__(self) -> int:
        return len(self.keys)


def build_dataset(examples: Sequence[Example]) -> Dataset:
    """Features exactly as the gateway computes them at request time."""
    features = [extract_features(e.messages, max_tokens=e.max_tokens) for e in examples]
    domains = [e.domain for e in examples]
    return Dataset(
        dense=np.array([f.values for f in features], dtype=float),
        words=[f.words for f in features],
        edge=np.array([e.edge_ok for e in examples], dtype=float),
        cloud=np.array([e.cloud_ok for e in examples], dtype=float),
        domains=None if None in domains else np.array(domains, dtype=str),
        lengths=np.array(
            [count_tokens("\n".join(message_text(m) for m in e.messages)) for e in examples],
            dtype=float,
        ),
        keys=[e.key for e in examples],
    )


def hash_bucket(key: str, salt: str, buckets: int) -> int:
    """A deterministic bucket in [0, buckets) for ``key``: the same in every run and process."""
    return int(hashlib.sha256(f"{salt}/{key}".encode()).hexdigest()[:8], 16) % buckets


__all__ = ["Array", "Dataset", "Rows", "build_dataset", "hash_bucket"]
