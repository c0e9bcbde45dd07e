"""Fitting one linear model: ridge regression of the cloud's gain on the runtime's features.

The target is ``cloud_ok - edge_ok`` (-1, 0, +1): ranking requests by its expected value is
what the APGR curve rewards. Two families (``Config.family``):

- ``pooled``: one ridge on all rows;
- ``within``: for data with domains (subjects, apps), the domains' mean gains are fitted on
  length alone, and a ridge on domain-centred features learns what makes a request harder
  than its neighbours, not which domain is easy (which a new domain would not share).

In both the length feature is unpenalised and the other dense features carry the penalty
``dense_ridge`` (infinite: left out, so the model is length alone); word indicators, when
``vocabulary`` is on, carry ``VOCAB_RIDGE``. The fit runs on per-fold sufficient statistics
(:class:`Moments`), so cross-validation re-solves a small system per fold instead of
rebuilding matrices.
"""

from __future__ import annotations

import collections
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from gateway.routing.features import FEATURE_NAMES
from gateway.routing.training.dataset import Array, Dataset, Rows

LENGTH_FEATURE = "log_tokens_last"
BETWEEN_RIDGE = 1.0
VOCAB_RIDGE = 300.0
VOCAB_MIN_PROMPTS = 15
VOCAB_MIN_DOMAINS = 6
VOCAB_MAX_WORDS = 1000
CALIBRATION_KNOTS = 101

PRIORS_IN_STD: dict[str, float] = {
    # For features that never vary in the training data (single-turn data cannot teach
    # conversation depth or max_tokens): fixed by judgement, in units of the trained raw
    # score's standard deviation, so their pull stays proportionate.
    "user_turns": 0.5,  # per log(1 + earlier user turns): deep chats carry more context
    "has_assistant": 0.0,
    "max_tokens_octaves": 0.35,  # per doubling above 512: 4096 tokens asked = +1 std
    "max_tokens_set": 0.0,
    "log_chars_system": 0.0,  # long system prompts are usually boilerplate
    "special_tokens": 0.0,
}

_LENGTH = FEATURE_NAMES.index(LENGTH_FEATURE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    family: Literal["pooled", "within"]
    dense_ridge: float
    """Penalty of the dense features but length; ``math.inf``: left out."""
    vocabulary: bool

    @property
    def label(self) -> str:
        if math.isinf(self.dense_ridge) and not self.vocabulary:
            return "length"
        dense = "length only" if math.isinf(self.dense_ridge) else f"dense λ={self.dense_ridge:g}"
        return f"{self.family}, {dense}" + (", vocabulary" if self.vocabulary else "")

    def as_dict(self) -> dict[str, object]:
        return {
            "family": self.family,
            "dense_ridge": None if math.isinf(self.dense_ridge) else self.dense_ridge,
            "vocabulary": self.vocabulary,
        }


LENGTH_ONLY = Config(family="pooled", dense_ridge=math.inf, vocabulary=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Design:
    """Standardisation, clipping ranges and vocabulary, all fixed on some training rows."""

    mean: Array
    std: Array
    low: Array
    high: Array
    trainable: npt.NDArray[np.bool_]
    vocabulary: list[str]

    @property
    def dense_columns(self) -> int:
        return int(self.trainable.sum())

    def matrix(self, data: Dataset, rows: Rows) -> Array:
        """``[1, standardised trainable features, word indicators]`` for ``rows``; inputs
        are clipped into the training range, as the runtime clips them."""
        x = data.dense[rows]
        x = np.where(np.isnan(x), self.mean, np.clip(x, self.low, self.high))
        z = ((x - self.mean) / self.std)[:, self.trainable]
        column = {w: j for j, w in enumerate(self.vocabulary)}
        words = np.zeros((len(rows), len(self.vocabulary)))
        for k, i in enumerate(rows):
            for w in data.words[i]:
                j = column.get(w)
                if j is not None:
                    words[k, j] = 1.0
        return np.hstack([np.ones((len(rows), 1)), z, words])


def make_design(data: Dataset, rows: Rows) -> Design:
    x = data.dense[rows]
    with warnings.catch_warnings():
        # An all-NaN column (a feature that never applies) warns "mean of empty slice".
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nan_to_num(np.nanmean(x, axis=0))
        std = np.nan_to_num(np.nanstd(x, axis=0))
        low = np.nanmin(x, axis=0)
        high = np.nanmax(x, axis=0)
    trainable = std > 1e-12
    # A feature that never varies has no range to learn: its definition bounds it instead.
    low = np.where(trainable, low, -np.inf)
    high = np.where(trainable, high, np.inf)
    return Design(
        mean=mean,
        std=np.where(trainable, std, 1.0),
        low=low,
        high=high,
        trainable=trainable,
        vocabulary=choose_vocabulary(data, rows),
    )


def choose_vocabulary(data: Dataset, rows: Rows) -> list[str]:
    """Words common in the training rows and, with domains, spread over many of them: a
    word of one subject (``plaintiff``, ``enzyme``) only says which training subject a
    prompt is from, which does not transfer to a new one."""
    prompts: collections.Counter[str] = collections.Counter()
    spread: dict[str, set[str]] = collections.defaultdict(set)
    for i in rows:
        for w in data.words[i]:
            prompts[w] += 1
            if data.domains is not None:
                spread[w].add(str(data.domains[i]))
    wide = VOCAB_MIN_DOMAINS if data.domains is not None else 0
    chosen = [w for w, n in prompts.items() if n >= VOCAB_MIN_PROMPTS and len(spread[w]) >= wide]
    chosen.sort(key=lambda w: (-prompts[w], w))
    return chosen[:VOCAB_MAX_WORDS]


@dataclass(frozen=True, slots=True, kw_only=True)
class Moments:
    """Sufficient statistics of some rows for both families: sums for the pooled ridge,
    per-block centred sums for the within ridge, and each block's size, mean length and
    mean gain for the between-block fit. Adding and subtracting blocks is exact, so a
    cross-validation fold is "all blocks minus the held-out one"."""

    gram: Array
    cross: Array
    centred_gram: Array
    """Sum over blocks of the block's Gram matrix about its own mean."""
    centred_cross: Array
    total: Array
    """Sum of the design rows."""
    n: Array
    """Rows per block."""
    mean_length: Array
    mean_gain: Array
    block_ids: Array
    """Which block each entry of ``n``, ``mean_length`` and ``mean_gain`` belongs to."""

    def __sub__(self, other: Moments) -> Moments:
        keep = ~np.isin(self.block_ids, other.block_ids)
        return Moments(
            gram=self.gram - other.gram,
            cross=self.cross - other.cross,
            centred_gram=self.centred_gram - other.centred_gram,
            centred_cross=self.centred_cross - other.centred_cross,
            total=self.total - other.total,
            n=self.n[keep],
            mean_length=self.mean_length[keep],
            mean_gain=self.mean_gain[keep],
            block_ids=self.block_ids[keep],
        )


def block_moments(a: Array, gain: Array, block: int, length_column: int) -> Moments:
    """The statistics of one block of design rows ``a`` and their gains."""
    total = a.sum(axis=0)
    n = float(len(a))
    gram = a.T @ a
    cross = a.T @ gain
    return Moments(
        gram=gram,
        cross=cross,
        centred_gram=gram - np.outer(total, total) / n,
        centred_cross=cross - total * (float(gain.sum()) / n),
        total=total,
        n=np.array([n]),
        mean_length=np.array([total[length_column] / n]),
        mean_gain=np.array([float(gain.sum()) / n]),
        block_ids=np.array([block], dtype=float),
    )


def combine(blocks: Sequence[Moments]) -> Moments:
    return Moments(
        gram=np.sum([b.gram for b in blocks], axis=0),
        cross=np.sum([b.cross for b in blocks], axis=0),
        centred_gram=np.sum([b.centred_gram for b in blocks], axis=0),
        centred_cross=np.sum([b.centred_cross for b in blocks], axis=0),
        total=np.sum([b.total for b in blocks], axis=0),
        n=np.concatenate([b.n for b in blocks]),
        mean_length=np.concatenate([b.mean_length for b in blocks]),
        mean_gain=np.concatenate([b.mean_gain for b in blocks]),
        block_ids=np.concatenate([b.block_ids for b in blocks]),
    )


def length_column(design: Design) -> int:
    """The length feature's column in the design matrix (after the intercept)."""
    return 1 + int(design.trainable[:_LENGTH].sum())


@dataclass(frozen=True, slots=True, kw_only=True)
class Solution:
    """Coefficients on the design's columns: ``raw = design_row @ beta``."""

    beta: Array


def solve(config: Config, design: Design, stats: Moments) -> Solution:
    """The ridge fit of ``config`` on the rows ``stats`` summarise (their blocks are the
    domains that the ``within`` family centres)."""
    t = design.dense_columns
    length = length_column(design)
    columns = len(stats.total)
    penalty = np.zeros(columns)
    active = np.ones(columns, dtype=bool)
    if math.isinf(config.dense_ridge):
        active[1 : 1 + t] = False
        active[length] = True
    else:
        penalty[1 : 1 + t] = config.dense_ridge
        penalty[length] = 0.0
    if config.vocabulary:
        penalty[1 + t :] = VOCAB_RIDGE
    else:
        active[1 + t :] = False
    beta = np.zeros(columns)
    if config.family == "pooled":
        sub = np.ix_(active, active)
        beta[active] = _ridge(stats.gram[sub], stats.cross[active], penalty[active])
        return Solution(beta=beta)
    active[0] = False  # centred: the intercept comes from the between-domain fit
    sub = np.ix_(active, active)
    beta[active] = _ridge(stats.centred_gram[sub], stats.centred_cross[active], penalty[active])
    # Between domains: their mean gains on their mean length (weighted by size).
    size = stats.n
    between = np.stack([stats.mean_length, np.ones_like(stats.mean_length)], axis=1)
    slope, offset = np.linalg.solve(
        (between * size[:, None]).T @ between + np.diag([BETWEEN_RIDGE, 0.0]),
        between.T @ (size * stats.mean_gain),
    )
    overall = stats.total / size.sum()
    # raw = offset + slope * length + beta . (row - overall mean): one linear model.
    beta[0] = offset - float(beta[1:] @ overall[1:])
    beta[length] += slope
    return Solution(beta=beta)


def _ridge(gram: Array, cross: Array, penalty: Array) -> Array:
    system = gram + np.diag(penalty)
    try:
        return np.asarray(np.linalg.solve(system, cross), dtype=float)
    except np.linalg.LinAlgError:
        # Singular (an unpenalised column constant in a small fold): the least-norm solution.
        return np.asarray(np.linalg.lstsq(system, cross, rcond=None)[0], dtype=float)
