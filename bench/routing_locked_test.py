"""Score a weights file on the locked test set, once (docs/classifier.md, Evaluation protocol).

    .venv/bin/python bench/routing_locked_test.py \\
        --model gateway/routing/models/complexity-v2.json \\
        [--data ../shared/routing-dev/mmlu_dev.jsonl]

Per kind of traffic (``bench/routing_protocol.py``: *unseen subjects*, *new prompts, seen
subjects*): APGR, CPT(50%) and CPT(80%) of the model, of prompt length in tokens and of
random scores (mean of 50 seeds), with 95 % percentile-bootstrap intervals (2,000 draws,
seed 0) over subjects for unseen subjects and over prompts for new prompts, and the paired
difference model - length on the same draws. The model scores every row through the
gateway's own classifier (``LearnedClassifier.classify``), exactly as it routes requests.

The run is appended to ``bench/locked_test_ledger.jsonl`` (the weights' SHA-256 and the
figures), and a model scored before is named as such: the protocol allows one opening per
shipped model.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.routing_protocol import DEFAULT_DATA, KIND_TITLES, KINDS, load_split  # noqa: E402
from gateway.routing.learned import LearnedClassifier, load_model  # noqa: E402
from gateway.routing.training.data import read_examples  # noqa: E402
from gateway.routing.training.dataset import build_dataset  # noqa: E402
from gateway.routing.training.metrics import (  # noqa: E402
    BOOTSTRAP_DRAWS,
    bootstrap,
    curve,
    quality,
    random_quality,
)

LEDGER = Path(__file__).resolve().parent / "locked_test_ledger.jsonl"
DEFAULT_PLOT = ROOT / "docs" / "routing_quality.png"
METRICS = ("apgr", "cpt50", "cpt80")


def evaluate(
    scores: np.ndarray,
    lengths: np.ndarray,
    edge: np.ndarray,
    cloud: np.ndarray,
    units: list[np.ndarray],
) -> dict[str, dict[str, dict[str, float]]]:
    """Point figures and intervals for model, length, random and model - length."""
    model_q, length_q = quality(scores, edge, cloud), quality(lengths, edge, cloud)
    random_q = random_quality(edge, cloud)
    draw = iter(range(10**9))

    def stats(rows: np.ndarray) -> list[float]:
        m = quality(scores[rows], edge[rows], cloud[rows])
        n = quality(lengths[rows], edge[rows], cloud[rows])
        r = quality(np.random.default_rng(next(draw)).random(len(rows)), edge[rows], cloud[rows])
        return [
            m.apgr,
            m.cpt50,
            m.cpt80,
            n.apgr,
            n.cpt50,
            n.cpt80,
            r.apgr,
            r.cpt50,
            r.cpt80,
            m.apgr - n.apgr,
        ]

    intervals = bootstrap(stats, units, draws=BOOTSTRAP_DRAWS, seed=0)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for k, (name, q) in enumerate((("model", model_q), ("length", length_q), ("random", random_q))):
        out[name] = {
            metric: {
                "value": round(getattr(q, metric), 4),
                "low": round(intervals[3 * k + j][0], 4),
                "high": round(intervals[3 * k + j][1], 4),
            }
            for j, metric in enumerate(METRICS)
        }
    out["model - length"] = {
        "apgr": {
            "value": round(model_q.apgr - length_q.apgr, 4),
            "low": round(intervals[9][0], 4),
            "high": round(intervals[9][1], 4),
        }
    }
    return out


def plot(
    path: Path, panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], title: str
) -> None:
    """One panel per kind: accuracy against the share of cloud calls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(11, 4.2), dpi=110, sharey=False)
    for ax, (kind, curves) in zip(axes, panels.items(), strict=True):
        for label, (xs, ys) in curves.items():
            ax.plot(100 * xs, ys, marker="o", markersize=3, label=label)
        ax.set_title(KIND_TITLES[kind], fontsize=10)
        ax.set_xlabel("share of requests sent to the cloud (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("accuracy")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _cell(m: dict[str, float], unit: str = "", digits: int = 3) -> str:
    return f"{m['value']:.{digits}f}{unit} [{m['low']:.{digits}f}, {m['high']:.{digits}f}]"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--no-ledger", action="store_true", help="do not record this run")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    args = parser.parse_args(argv)

    weights_sha = hashlib.sha256(args.model.read_bytes()).hexdigest()
    earlier = [
        json.loads(line) for line in (LEDGER.read_text().splitlines() if LEDGER.exists() else [])
    ]
    if any(e["sha256"] == weights_sha for e in earlier):
        print(f"NOTE: {args.model.name} ({weights_sha[:12]}) was scored on the locked test before")
    split = load_split(args.data)
    examples = read_examples(args.data)
    data = build_dataset(examples)
    classifier = LearnedClassifier(load_model(args.model))
    results: dict[str, object] = {}
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    print(f"# Locked test: {classifier.name} ({weights_sha[:12]})\n")
    for kind in KINDS:
        rows = np.array(split.rows(kind))
        scores = np.array(
            [classifier.classify(list(examples[i].messages), max_tokens=None).score for i in rows]
        )
        edge, cloud, lengths = data.edge[rows], data.cloud[rows], data.lengths[rows]
        if kind == "unseen_subjects":
            assert data.domains is not None
            names = data.domains[rows]
            units = [np.flatnonzero(names == s) for s in sorted(set(names.tolist()))]
            unit = f"{len(units)} subjects"
        else:
            units = [np.array([k]) for k in range(len(rows))]
            unit = f"{len(units)} prompts"
        figures = evaluate(scores, lengths, edge, cloud, units)
        xs, ys = curve(scores, edge, cloud)
        rng = np.random.default_rng(0)
        panels[kind] = {
            classifier.model.version: (xs, ys),
            "prompt length": curve(lengths, edge, cloud),
            "random (mean of 50)": (
                xs,
                np.mean([curve(rng.random(len(rows)), edge, cloud)[1] for _ in range(50)], axis=0),
            ),
        }
        results[kind] = {"rows": len(rows), "bootstrap_over": unit, **figures}
        print(f"## {KIND_TITLES[kind]}: {len(rows)} rows, bootstrap over {unit}\n")
        print("| router | APGR | CPT(50%) | CPT(80%) |\n|---|---:|---:|---:|")
        for name in ("model", "length", "random"):
            f = figures[name]
            print(
                f"| {name} | {_cell(f['apgr'])} | {_cell(f['cpt50'], '%', 1)} | "
                f"{_cell(f['cpt80'], '%', 1)} |"
            )
        print(f"| model - length (paired) | {_cell(figures['model - length']['apgr'])} | | |\n")
    plot(args.plot, panels, f"Locked test of {args.data.name}: {classifier.name}")
    print(f"plot: {args.plot}")
    if not args.no_ledger:
        entry = {
            "date": datetime.datetime.now(datetime.UTC).date().isoformat(),
            "model": args.model.name,
            "version": classifier.model.version,
            "sha256": weights_sha,
            "results": results,
        }
        with LEDGER.open("a", encoding="utf-8") as ledger:
            ledger.write(json.dumps(entry, ensure_ascii=False) + "\n")
        print(f"recorded in {LEDGER.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
