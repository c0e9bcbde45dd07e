"""Routing quality as the dev set README defines it: the accuracy-vs-cloud-share curve,
APGR and CPT, plus bootstrap intervals. numpy only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

RANDOM_SEEDS = 50
BOOTSTRAP_DRAWS = 2000


@dataclass(frozen=True, slots=True, kw_only=True)
class Quality:
    apgr: float
    cpt50: float
    """% of cloud calls that recovers half the cloud's advantage; NaN if never reached."""
    cpt80: float

    def as_dict(self, digits: int = 4) -> dict[str, float | None]:
        return {
            k: (round(v, digits) if np.isfinite(v) else None)
            for k, v in (("apgr", self.apgr), ("cpt50", self.cpt50), ("cpt80", self.cpt80))
        }


def curve(score: Array, edge: Array, cloud: Array, steps: int = 10) -> tuple[Array, Array]:
    """Accuracy when the top k % of scores go to the cloud, k = 0, 10, ..., 100; ties are
    counted in expectation (the README's code)."""
    n = len(score)
    order = np.argsort(-score, kind="stable")
    cum = np.concatenate(([0.0], np.cumsum((cloud - edge)[order])))
    s = score[order]
    b = np.concatenate(([0], np.flatnonzero(s[1:] != s[:-1]) + 1, [n]))
    gain = np.interp(np.arange(n + 1), b, cum[b])
    xs = np.linspace(0.0, 1.0, steps + 1)
    ys = (edge.sum() + gain[[round(float(x) * n) for x in xs]]) / n
    return xs, np.asarray(ys, dtype=float)


def quality(score: Array, edge: Array, cloud: Array) -> Quality:
    """APGR, CPT(50%) and CPT(80%); all NaN when the cloud is no better than the edge
    (the gap they are measured against is then zero or negative)."""
    w, c = float(edge.mean()), float(cloud.mean())
    if not c > w:
        return Quality(apgr=float("nan"), cpt50=float("nan"), cpt80=float("nan"))
    xs, ys = curve(score, edge, cloud)
    apgr = (float(((ys[1:] + ys[:-1]) / 2 * np.diff(xs)).sum()) - w) / (c - w)

    def cpt(frac: float) -> float:
        t = w + frac * (c - w)
        reached = np.flatnonzero(ys >= t - 1e-12)
        i = int(reached[0])  # ys[-1] == c >= t: always reached, and i >= 1 since ys[0] == w < t
        return float(
            100 * (xs[i - 1] + (t - ys[i - 1]) / (ys[i] - ys[i - 1]) * (xs[i] - xs[i - 1]))
        )

    return Quality(apgr=apgr, cpt50=cpt(0.5), cpt80=cpt(0.8))


def random_quality(edge: Array, cloud: Array, seeds: int = RANDOM_SEEDS) -> Quality:
    """Mean over seeds 0..seeds-1 of uniformly random scores (the README's baseline)."""
    runs = [quality(np.random.default_rng(s).random(len(edge)), edge, cloud) for s in range(seeds)]
    return Quality(
        apgr=float(np.mean([r.apgr for r in runs])),
        cpt50=float(np.mean([r.cpt50 for r in runs])),
        cpt80=float(np.mean([r.cpt80 for r in runs])),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Interval:
    value: float
    low: float
    high: float

    def as_dict(self, digits: int = 3) -> dict[str, float]:
        return {
            "value": round(self.value, digits),
            "low": round(self.low, digits),
            "high": round(self.high, digits),
        }


def bootstrap(
    statistics: Callable[[npt.NDArray[np.intp]], Sequence[float]],
    units: Sequence[npt.NDArray[np.intp]],
    *,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> list[tuple[float, float]]:
    """95 % percentile intervals of ``statistics(rows)`` when the ``units`` (groups of row
    indices: one per subject, or one per prompt) are resampled with replacement.

    ``statistics`` returns several numbers per draw (several routers, their differences),
    all computed on the same resampled rows, so paired differences are paired."""
    rng = np.random.default_rng(seed)
    samples: list[Sequence[float]] = []
    for _ in range(draws):
        picks = rng.integers(0, len(units), len(units))
        samples.append(statistics(np.concatenate([units[p] for p in picks])))
    table = np.array(samples, dtype=float)
    lows = np.nanpercentile(table, 2.5, axis=0)
    highs = np.nanpercentile(table, 97.5, axis=0)
    return [(float(lo), float(hi)) for lo, hi in zip(lows, highs, strict=True)]


__all__ = [
    "BOOTSTRAP_DRAWS",
    "RANDOM_SEEDS",
    "Interval",
    "Quality",
    "bootstrap",
    "curve",
    "quality",
    "random_quality",
]
