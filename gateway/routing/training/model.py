"""A fitted model in the runtime's shape, and the versioned weights file it is written as.

The file is what :func:`gateway.routing.learned.parse_model` reads: one linear model over
the features of ``gateway.routing.features`` (a weight per dense feature, a weight per
vocabulary word, an intercept) and the percentile map that turns its raw number into a
score in [0, 1]. Features that never vary in the training data get fixed prior weights,
marked ``"source": "prior"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gateway.routing.features import FEATURE_NAMES, FEATURE_SET_VERSION
from gateway.routing.learned import MODEL_FORMAT
from gateway.routing.training.dataset import Array, Dataset, Rows
from gateway.routing.training.fit import (
    CALIBRATION_KNOTS,
    PRIORS_IN_STD,
    Config,
    Design,
    Solution,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainedModel:
    config: Config
    design: Design
    intercept: float
    weights: Array
    """One per feature of ``FEATURE_NAMES`` (priors included)."""
    sources: list[str]
    vocabulary: dict[str, float]
    knots: Array

    def raw(self, data: Dataset, rows: Rows) -> Array:
        d = self.design
        x = data.dense[rows]
        x = np.where(np.isnan(x), d.mean, np.clip(x, d.low, d.high))
        out = self.intercept + ((x - d.mean) / d.std) @ self.weights
        if self.vocabulary:
            for k, i in enumerate(rows):
                # fsum, as at runtime: a set's order follows PYTHONHASHSEED, an exact sum doesn't.
                out[k] += math.fsum(self.vocabulary.get(w, 0.0) for w in data.words[i])
        return np.asarray(out, dtype=float)

    def score(self, data: Dataset, rows: Rows) -> Array:
        return calibrate(self.raw(data, rows), self.knots)


def calibrate(raw: Array, knots: Array) -> Array:
    """Raw score to training percentile in [0, 1]; the runtime does the same in pure Python."""
    return np.asarray(np.interp(raw, knots, np.linspace(0.0, 1.0, len(knots))), dtype=float)


def trained_model(
    config: Config, design: Design, solution: Solution, data: Dataset, rows: Rows
) -> TrainedModel:
    """The runtime-shaped model of a solution fitted on ``rows``."""
    t = design.dense_columns
    beta = solution.beta
    weights = np.zeros(len(FEATURE_NAMES))
    weights[design.trainable] = beta[1 : 1 + t]
    vocabulary = {
        w: float(v) for w, v in zip(design.vocabulary, beta[1 + t :], strict=True) if v != 0.0
    }
    raw_train = design.matrix(data, rows) @ beta
    spread = float(raw_train.std()) or 1.0
    sources: list[str] = []
    for j, name in enumerate(FEATURE_NAMES):
        if not design.trainable[j]:
            weights[j] = PRIORS_IN_STD.get(name, 0.0) * spread
            sources.append("prior")
        else:
            sources.append("learned" if weights[j] != 0.0 else "unused")
    return TrainedModel(
        config=config,
        design=design,
        intercept=float(beta[0]),
        weights=weights,
        sources=sources,
        vocabulary=vocabulary,
        knots=np.quantile(raw_train, np.linspace(0.0, 1.0, CALIBRATION_KNOTS)),
    )


def _r(x: float, digits: int = 6) -> float:
    return round(float(x), digits)


def weights_document(
    model: TrainedModel, *, version: str, training: dict[str, object]
) -> dict[str, object]:
    """The weights file's content (rounded to 6 digits; the runtime reads exactly this)."""
    d = model.design
    features = [
        {
            "name": name,
            "low": _r(d.low[j]) if math.isfinite(d.low[j]) else None,
            "high": _r(d.high[j]) if math.isfinite(d.high[j]) else None,
            "mean": _r(d.mean[j]),
            "std": _r(d.std[j]),
            "weight": _r(model.weights[j]),
            "source": model.sources[j],
        }
        for j, name in enumerate(FEATURE_NAMES)
    ]
    # A knot rounded onto its neighbour keeps the map monotone: rounding never reorders.
    return {
        "format": MODEL_FORMAT,
        "version": version,
        "feature_set_version": FEATURE_SET_VERSION,
        "model": "linear: intercept + sum(weight * (clip(x, low, high) - mean) / std)"
        " + sum(weights of the vocabulary words present)",
        "score": "piecewise-linear map of the raw score onto its training percentiles",
        "training": training,
        "intercept": _r(model.intercept),
        "features": features,
        "vocabulary": {w: _r(v) for w, v in sorted(model.vocabulary.items()) if _r(v) != 0.0},
        "calibration": [_r(k) for k in model.knots],
    }


__all__ = ["TrainedModel", "calibrate", "trained_model", "weights_document"]
