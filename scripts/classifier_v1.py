"""complexity-v1's training pipeline, kept to reproduce that weights file (issue 14
replaced it as the default by ``scripts/train_classifier.py``; policies may still name v1).

    .venv/bin/python scripts/classifier_v1.py \\
        --data /work/shared/routing-dev/mmlu_dev.jsonl \\
        --out gateway/routing/models/complexity-v1.json

``bench/embedding_signal.py`` reuses its pieces.

The target is the per-prompt gain of the cloud, ``cloud_correct - edge_correct`` (-1, 0 or
+1): ranking prompts by its expected value is exactly what the APGR curve rewards, whereas
P(edge wrong) ranks the prompts that neither tier gets right first (and scores below random
here). The model is linear in the features of ``gateway.routing.features`` and has two parts,
because the two kinds of variation in the data carry very different amounts of evidence:

- *between domains*: 28 subjects, so 27 training points per fold. Only one feature is
  fitted here (``log_words``, the prompt's length in words) by weighted least squares on the
  domains' means: more features over-fit 27 points (tried: APGR falls to 0.55).
- *within domains*: thousands of prompts. A ridge regression on domain-centred features and
  domain-centred gains learns what makes a prompt harder than its neighbours, without
  learning which subject is easy (which a new subject would not share).

The sum of the two is one linear model: an intercept, a weight per dense feature and a
weight per vocabulary word. Features that never vary in the training data (conversation
depth, ``max_tokens``, system prompt: the dev set is single-turn) get fixed prior weights,
recorded as such in the file. A monotone map from raw score to training percentile makes
the shipped score a number in [0, 1] with a plain meaning: ``cloud_above: 0.7`` sends about
30 % of traffic like the training prompts to the cloud.

Cross-validation leaves one domain out at a time (28 folds): vocabulary, standardisation,
both regressions and the percentile map are all refitted without the held-out domain, so
the reported APGR comes from scores for subjects the model never saw. Everything is
deterministic: no random state enters the fit; the random-router baseline uses seeds 0..49.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.routing.features import (  # noqa: E402
    FEATURE_NAMES,
    FEATURE_SET_VERSION,
    extract_features,
)
from gateway.routing.training.metrics import curve  # noqa: E402
from gateway.tokens import count_tokens  # noqa: E402
from hybrid_common.protocol import ChatMessage  # noqa: E402

Array = npt.NDArray[np.float64]

MODEL_VERSION = "complexity-v1"
FORMAT = "gateway.complexity-model/1"

BETWEEN_FEATURE = "log_words"
BETWEEN_RIDGE = 1.0
DENSE_RIDGE = 1000.0
VOCAB_RIDGE = 300.0
VOCAB_MIN_PROMPTS = 15
VOCAB_MIN_DOMAINS = 6
VOCAB_MAX_WORDS = 1000
CALIBRATION_KNOTS = 101
RANDOM_SEEDS = 50

PRIORS_IN_STD: dict[str, float] = {
    # Not learnable from single-turn MMLU prompts: fixed by judgement, in units of the
    # trained raw score's standard deviation, so their pull stays proportionate.
    "user_turns": 0.5,  # per log(1 + earlier user turns): deep chats carry more context
    "has_assistant": 0.0,
    "max_tokens_octaves": 0.35,  # per doubling above 512: 4096 tokens asked = +1 std
    "max_tokens_set": 0.0,
    "log_chars_system": 0.0,  # long system prompts are usually boilerplate
    "special_tokens": 0.0,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Dataset:
    prompts: list[str]
    domains: npt.NDArray[np.str_]
    edge: Array
    cloud: Array
    dense: Array
    words: list[frozenset[str]]

    @property
    def gain(self) -> Array:
        return self.cloud - self.edge


@dataclass(frozen=True, slots=True, kw_only=True)
class LinearFit:
    """A fitted model in the shape the runtime reads."""

    intercept: float
    low: Array
    high: Array
    mean: Array
    std: Array
    weights: Array
    sources: list[str]
    vocabulary: dict[str, float]
    knots: Array

    def raw(self, data: Dataset, rows: npt.NDArray[np.intp]) -> Array:
        x = data.dense[rows]
        x = np.where(np.isnan(x), self.mean, np.clip(x, self.low, self.high))
        z = (x - self.mean) / self.std
        out = self.intercept + z @ self.weights
        for k, i in enumerate(rows):
            # fsum, as at runtime: a set's order follows PYTHONHASHSEED, an exact sum doesn't.
            out[k] += math.fsum(self.vocabulary.get(w, 0.0) for w in data.words[i])
        return out

    def score(self, data: Dataset, rows: npt.NDArray[np.intp]) -> Array:
        return calibrate(self.raw(data, rows), self.knots)


def load_dataset(path: Path) -> Dataset:
    rows = [
        json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()
    ]
    prompts = [str(r["prompt"]) for r in rows]
    feats = [
        extract_features([ChatMessage(role="user", content=p)], max_tokens=None) for p in prompts
    ]
    return Dataset(
        prompts=prompts,
        domains=np.array([str(r["domain"]) for r in rows]),
        edge=np.array([bool(r["edge_correct"]) for r in rows], dtype=float),
        cloud=np.array([bool(r["cloud_correct"]) for r in rows], dtype=float),
        dense=np.array([f.values for f in feats], dtype=float),
        words=[f.words for f in feats],
    )


def calibrate(raw: Array, knots: Array) -> Array:
    """Raw score to training percentile in [0, 1]; the runtime does the same in pure Python."""
    return np.asarray(np.interp(raw, knots, np.linspace(0.0, 1.0, len(knots))), dtype=float)


def choose_vocabulary(data: Dataset, rows: npt.NDArray[np.intp]) -> list[str]:
    """Words common in the training rows and spread over many of their domains.

    The spread requirement keeps subject names (``plaintiff``, ``enzyme``) out: they only
    say which training subject a prompt is from, which does not transfer to a new one.
    """
    prompts: collections.Counter[str] = collections.Counter()
    domains: dict[str, set[str]] = collections.defaultdict(set)
    for i in rows:
        d = str(data.domains[i])
        for w in data.words[i]:
            prompts[w] += 1
            domains[w].add(d)
    chosen = [
        w
        for w, n in prompts.items()
        if n >= VOCAB_MIN_PROMPTS and len(domains[w]) >= VOCAB_MIN_DOMAINS
    ]
    chosen.sort(key=lambda w: (-prompts[w], w))
    return chosen[:VOCAB_MAX_WORDS]


def _indicators(data: Dataset, rows: npt.NDArray[np.intp], vocab: list[str]) -> Array:
    col = {w: j for j, w in enumerate(vocab)}
    out = np.zeros((len(rows), len(vocab)))
    for k, i in enumerate(rows):
        for w in data.words[i]:
            j = col.get(w)
            if j is not None:
                out[k, j] = 1.0
    return out


def _centre_by_group(a: Array, groups: npt.NDArray[np.str_]) -> Array:
    out = a.copy()
    for g in np.unique(groups):
        m = groups == g
        out[m] -= out[m].mean(axis=0)
    return out


def fit(data: Dataset, rows: npt.NDArray[np.intp]) -> LinearFit:
    """Fit on ``rows`` only (the CV folds call this with the held-out domain removed)."""
    groups = data.domains[rows]
    gain = data.gain[rows]
    x = data.dense[rows]
    mean = np.nanmean(x, axis=0)
    std = np.nanstd(x, axis=0)
    trainable = std > 0
    std = np.where(trainable, std, 1.0)
    mean = np.where(trainable, mean, 0.0)
    # Inputs are clipped into the training range: a pasted document with forty "A." lines
    # must not extrapolate a linear weight forty times past anything the fit has seen.
    # Prior features have no range to learn; their definitions are bounded instead.
    low = np.where(trainable, np.nanmin(x, axis=0), -np.inf)
    high = np.where(trainable, np.nanmax(x, axis=0), np.inf)
    x = np.where(np.isnan(x), mean, x)  # not applicable: the mean, so it adds nothing
    z = (x - mean) / std

    # Between domains: domain-mean gain on the domain-mean of one standardised feature.
    j_between = FEATURE_NAMES.index(BETWEEN_FEATURE)
    names = sorted(set(groups.tolist()))
    size = np.array([(groups == g).sum() for g in names], dtype=float)
    zm = np.array([z[groups == g, j_between].mean() for g in names])
    ym = np.array([gain[groups == g].mean() for g in names])
    design = np.stack([zm, np.ones_like(zm)], axis=1)
    reg = np.diag([BETWEEN_RIDGE, 0.0])
    slope, offset = np.linalg.solve(
        (design * size[:, None]).T @ design + reg, design.T @ (size * ym)
    )

    # Within domains: ridge on domain-centred dense features + word indicators.
    vocab = choose_vocabulary(data, rows)
    full = np.hstack([z[:, trainable], _indicators(data, rows, vocab)])
    centred = _centre_by_group(full, groups)
    target = _centre_by_group(gain[:, None], groups)[:, 0]
    penalty = np.array([DENSE_RIDGE] * int(trainable.sum()) + [VOCAB_RIDGE] * len(vocab))
    beta = np.linalg.solve(centred.T @ centred + np.diag(penalty), centred.T @ target)

    weights = np.zeros(len(FEATURE_NAMES))
    weights[trainable] = beta[: int(trainable.sum())]
    weights[j_between] += slope
    word_weights = beta[int(trainable.sum()) :]
    intercept = float(offset - beta @ full.mean(axis=0))
    sources = ["learned" if t else "prior" for t in trainable]

    raw_train = intercept + z @ weights + full[:, int(trainable.sum()) :] @ word_weights
    spread = float(raw_train.std()) or 1.0
    for j, name in enumerate(FEATURE_NAMES):
        if not trainable[j]:
            weights[j] = PRIORS_IN_STD.get(name, 0.0) * spread
    knots = np.quantile(raw_train, np.linspace(0.0, 1.0, CALIBRATION_KNOTS))
    return LinearFit(
        intercept=intercept,
        low=low,
        high=high,
        mean=mean,
        std=std,
        weights=weights,
        sources=sources,
        vocabulary={w: float(v) for w, v in zip(vocab, word_weights, strict=True)},
        knots=knots,
    )


def cross_validate(data: Dataset) -> Array:
    """Out-of-fold scores: each domain scored by a model fitted without it."""
    oof = np.zeros(len(data.prompts))
    for d in sorted(set(data.domains.tolist())):
        held = np.flatnonzero(data.domains == d)
        train = np.flatnonzero(data.domains != d)
        oof[held] = fit(data, train).score(data, held)
    return oof


def metrics(score: Array, edge: Array, cloud: Array) -> dict[str, float]:
    """APGR, CPT(50%) and CPT(80%) exactly as the dev set README defines them."""
    xs, ys = curve(score, edge, cloud)
    w, c = float(edge.mean()), float(cloud.mean())
    apgr = (float(((ys[1:] + ys[:-1]) / 2 * np.diff(xs)).sum()) - w) / (c - w)

    def cpt(frac: float) -> float:
        t = w + frac * (c - w)
        i = int(np.argmax(ys >= t - 1e-12))
        return float(
            100 * (xs[i - 1] + (t - ys[i - 1]) / (ys[i] - ys[i - 1]) * (xs[i] - xs[i - 1]))
        )

    return {"apgr": apgr, "cpt50": cpt(0.5), "cpt80": cpt(0.8)}


def random_metrics(data: Dataset) -> dict[str, float]:
    runs = [
        metrics(np.random.default_rng(seed).random(len(data.prompts)), data.edge, data.cloud)
        for seed in range(RANDOM_SEEDS)
    ]
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


def length_scores(data: Dataset) -> Array:
    return np.array([count_tokens(p) for p in data.prompts], dtype=float)


def reference_checks(model: LinearFit, data: Dataset, count: int = 8) -> list[dict[str, object]]:
    """A few prompts and their expected scores: the runtime's tests replay them."""
    picks = np.linspace(0, len(data.prompts) - 1, count).round().astype(np.intp)
    scores = model.score(data, picks)
    return [
        {"prompt": data.prompts[i], "score": round(float(s), 6)}
        for i, s in zip(picks, scores, strict=True)
    ]


def _r(x: float, digits: int = 6) -> float:
    return round(float(x), digits)


def model_document(
    model: LinearFit,
    data: Dataset,
    *,
    data_path: Path,
    data_sha256: str,
    cv: dict[str, dict[str, float]],
) -> dict[str, object]:
    features = [
        {
            "name": name,
            "low": _r(model.low[j]) if math.isfinite(model.low[j]) else None,
            "high": _r(model.high[j]) if math.isfinite(model.high[j]) else None,
            "mean": _r(model.mean[j]),
            "std": _r(model.std[j]),
            "weight": _r(model.weights[j]),
            "source": model.sources[j],
        }
        for j, name in enumerate(FEATURE_NAMES)
    ]
    vocabulary = {w: _r(v) for w, v in sorted(model.vocabulary.items())}
    rounded = LinearFit(
        intercept=_r(model.intercept),
        low=np.array([-np.inf if f["low"] is None else f["low"] for f in features], dtype=float),
        high=np.array([np.inf if f["high"] is None else f["high"] for f in features], dtype=float),
        mean=np.array([f["mean"] for f in features], dtype=float),
        std=np.array([f["std"] for f in features], dtype=float),
        weights=np.array([f["weight"] for f in features], dtype=float),
        sources=model.sources,
        vocabulary=vocabulary,
        knots=np.array([_r(k) for k in model.knots]),
    )
    return {
        "format": FORMAT,
        "version": MODEL_VERSION,
        "feature_set_version": FEATURE_SET_VERSION,
        "model": "linear: intercept + sum(weight * (clip(x, low, high) - mean) / std)"
        " + sum(weights of the vocabulary words present)",
        "score": "piecewise-linear map of the raw score onto its training percentiles",
        "training": {
            "data": data_path.name,
            "data_sha256": data_sha256,
            "rows": len(data.prompts),
            "domains": len(set(data.domains.tolist())),
            "target": "cloud_correct - edge_correct",
            "between_feature": BETWEEN_FEATURE,
            "ridge": {"between": BETWEEN_RIDGE, "dense": DENSE_RIDGE, "vocabulary": VOCAB_RIDGE},
            "vocabulary_rule": {
                "min_prompts": VOCAB_MIN_PROMPTS,
                "min_domains": VOCAB_MIN_DOMAINS,
                "max_words": VOCAB_MAX_WORDS,
            },
            "priors_in_std": PRIORS_IN_STD,
            "command": "scripts/train_classifier.py --data DATA --out OUT",
        },
        "cv": {
            "method": "leave-one-domain-out (28 folds), out-of-fold scores pooled",
            **{name: {k: _r(v, 4) for k, v in m.items()} for name, m in cv.items()},
        },
        "intercept": rounded.intercept,
        "features": features,
        "vocabulary": vocabulary,
        "calibration": [float(k) for k in rounded.knots],
        "checks": reference_checks(rounded, data),
    }


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="labelled JSONL dev set")
    parser.add_argument("--out", type=Path, required=True, help="weights file to write")
    parser.add_argument("--skip-cv", action="store_true", help="fit only (no CV figures)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    data_sha256 = hashlib.sha256(args.data.read_bytes()).hexdigest()
    data = load_dataset(args.data)
    print(f"features: {len(data.prompts)} prompts in {time.perf_counter() - started:.1f}s")

    cv: dict[str, dict[str, float]] = {}
    if not args.skip_cv:
        cv["learned"] = metrics(cross_validate(data), data.edge, data.cloud)
        cv["length"] = metrics(length_scores(data), data.edge, data.cloud)
        cv["random"] = random_metrics(data)
        for name, m in cv.items():
            print(
                f"{name:8s} APGR {m['apgr']:.3f}  CPT(50%) {m['cpt50']:.1f}%  "
                f"CPT(80%) {m['cpt80']:.1f}%"
            )

    model = fit(data, np.arange(len(data.prompts)))
    doc = model_document(model, data, data_path=args.data, data_sha256=data_sha256, cv=cv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    size_kib = math.ceil(args.out.stat().st_size / 1024)
    print(f"wrote {args.out} ({size_kib} KiB) in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
