"""Model selection by cross-validation, and nested cross-validation to estimate it.

:func:`fit_selected` picks a :class:`Config` from :func:`candidates` by cross-validation over
blocks of the training rows: one block per domain when the data has domains (leave one
domain out: rewards what transfers to a domain it has not seen), otherwise five blocks by
request hash. :func:`nested_scores` runs that whole selection inside each fold of an outer
split, so the pooled out-of-fold scores estimate the *procedure*, selection included.

Inner folds reuse the training rows' standardisation and vocabulary: that can bias the
choice a little, never the outer estimate, because the outer held-out rows are outside both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gateway.routing.training.dataset import Array, Dataset, Rows, hash_bucket
from gateway.routing.training.fit import (
    LENGTH_ONLY,
    Config,
    Design,
    Moments,
    block_moments,
    combine,
    length_column,
    make_design,
    solve,
)
from gateway.routing.training.metrics import Quality, quality
from gateway.routing.training.model import TrainedModel, calibrate, trained_model

DENSE_RIDGES = (10_000.0, 1_000.0, 100.0)
MAX_DOMAIN_BLOCKS = 40
"""More domains than this are hashed into ``HASH_FOLDS`` blocks (and ``within`` is off)."""
HASH_FOLDS = 5
FOLD_SALT = "gateway-train-folds-v1"


def candidates(*, within: bool) -> list[Config]:
    """Simplest first: on equal cross-validated APGR the earlier one wins."""
    families = ("pooled", "within") if within else ("pooled",)
    out = [LENGTH_ONLY]
    for vocabulary in (False, True):
        for family in families:
            for ridge in (math.inf, *DENSE_RIDGES):
                config = Config(family=family, dense_ridge=ridge, vocabulary=vocabulary)  # type: ignore[arg-type]
                if config.label != "length" and config not in out:
                    out.append(config)
    return out


def blocks(data: Dataset, rows: Rows) -> tuple[list[str], bool]:
    """Block label of each row and whether blocks are domains (so ``within`` applies):
    3 to 40 domains are blocks themselves, more are hashed into folds, fewer (or none)
    leave the folds to the request hash."""
    if data.domains is not None:
        names = set(data.domains[rows].tolist())
        if 3 <= len(names) <= MAX_DOMAIN_BLOCKS:
            return [str(data.domains[i]) for i in rows], True
        if len(names) > MAX_DOMAIN_BLOCKS:
            return [_fold(str(data.domains[i])) for i in rows], False
    return [_fold(data.keys[i]) for i in rows], False


def _fold(key: str) -> str:
    return f"fold{hash_bucket(key, FOLD_SALT, HASH_FOLDS)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    chosen: Config
    table: list[tuple[Config, Quality]]
    """Every candidate's cross-validated quality, in candidate order."""
    folds: int
    by_domain: bool


class _Prepared:
    """The training rows' design matrix and per-block statistics, computed once."""

    def __init__(self, data: Dataset, rows: Rows) -> None:
        self.rows = rows
        self.design: Design = make_design(data, rows)
        self.matrix = self.design.matrix(data, rows)
        labels, self.by_domain = blocks(data, rows)
        self.names = sorted(set(labels))
        index = np.array([self.names.index(label) for label in labels])
        self.members = [np.flatnonzero(index == b) for b in range(len(self.names))]
        gain = data.gain[rows]
        column = length_column(self.design)
        self.blocks: list[Moments] = [
            block_moments(self.matrix[m], gain[m], b, column) for b, m in enumerate(self.members)
        ]
        self.total = combine(self.blocks)


def _select(prepared: _Prepared, data: Dataset, configs: Sequence[Config] | None) -> Selection:
    configs = list(configs or candidates(within=prepared.by_domain))
    if not prepared.by_domain:
        configs = [c for c in configs if c.family == "pooled"]
    edge, cloud = data.edge[prepared.rows], data.cloud[prepared.rows]
    table: list[tuple[Config, Quality]] = []
    folds = [prepared.total - block for block in prepared.blocks]
    for config in configs:
        scores = np.zeros(len(prepared.rows))
        for held, rest in enumerate(folds):
            raw = prepared.matrix @ solve(config, prepared.design, rest).beta
            inside = np.ones(len(raw), dtype=bool)
            inside[prepared.members[held]] = False
            knots = np.quantile(raw[inside], np.linspace(0.0, 1.0, 101))
            scores[prepared.members[held]] = calibrate(raw[prepared.members[held]], knots)
        table.append((config, quality(scores, edge, cloud)))
    best = max(range(len(table)), key=lambda k: (_finite(table[k][1].apgr), -k))
    return Selection(
        chosen=table[best][0],
        table=table,
        folds=len(prepared.names),
        by_domain=prepared.by_domain,
    )


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


def fit_selected(
    data: Dataset, rows: Rows, configs: Sequence[Config] | None = None
) -> tuple[TrainedModel, Selection]:
    """Select on ``rows`` by cross-validation, then refit the winner on all of ``rows``."""
    prepared = _Prepared(data, rows)
    selection = _select(prepared, data, configs)
    return fit_config(prepared, data, selection.chosen), selection


def fit_config(prepared: _Prepared, data: Dataset, config: Config) -> TrainedModel:
    solution = solve(config, prepared.design, prepared.total)
    return trained_model(config, prepared.design, solution, data, prepared.rows)


def nested_scores(
    data: Dataset,
    rows: Rows,
    outer: Sequence[Rows],
    configs: Sequence[Config] | None = None,
) -> tuple[Array, list[Config]]:
    """Out-of-fold scores for the rows of each ``outer`` fold (aligned with the
    concatenation of ``outer``): selection and fit on ``rows`` minus the fold."""
    pieces: list[Array] = []
    chosen: list[Config] = []
    for held in outer:
        train = np.setdiff1d(rows, held)
        model, selection = fit_selected(data, train, configs)
        pieces.append(model.score(data, held))
        chosen.append(selection.chosen)
    return np.concatenate(pieces), chosen


__all__ = [
    "Selection",
    "candidates",
    "fit_selected",
    "nested_scores",
]
