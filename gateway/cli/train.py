"""``python -m gateway train``: fit the routing classifier on the operator's labelled traffic.

    python -m gateway train --data FILE.jsonl --out WEIGHTS.json [--report DIR]
        [--target-edge-share 0.5] [--version NAME]

Each line of FILE is ``{"messages": [...], "edge_ok": bool, "cloud_ok": bool}`` (what
``python -m gateway shadow export`` writes once labelled), or the routing dev set's
``{"prompt": ..., "edge_correct": ..., "cloud_correct": ...}``; see
:mod:`gateway.routing.training.data`. A fifth of the lines (by request hash) is held out;
the model is chosen by cross-validation on the rest and fitted there
(:mod:`gateway.routing.training.select`), and the held-out slice is scored by the written
weights through the gateway's own classifier, against prompt length and random scores.

Writes WEIGHTS (versioned JSON: ``routing.classifier: {kind: learned, model: WEIGHTS}``)
and, with ``--report``, the report files (:mod:`gateway.routing.training.report`). The
same input gives the same bytes. Exit status: 0 done; 2 bad arguments or bad input (the
message names the line), and then nothing is written.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.cli.classify import calibrate

HOLDOUT_SALT = "gateway-train-holdout-v1"
HOLDOUT_PERCENT = 20


class UsageError(Exception):
    """Bad arguments or input: the message is printed and the exit status is 2."""


def _share(value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return share


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gateway train",
        description="Fit the routing classifier on labelled traffic (JSONL).",
        epilog="Exit status: 0 done; 2 bad arguments or input (nothing is written then).",
    )
    parser.add_argument("--data", type=Path, required=True, help="labelled JSONL file")
    parser.add_argument("--out", type=Path, required=True, help="weights file to write")
    parser.add_argument("--report", type=Path, metavar="DIR", help="write the report here")
    parser.add_argument(
        "--target-edge-share",
        type=_share,
        default=0.5,
        metavar="X",
        help="report the cloud_above that keeps share X of requests at the edge (0.5)",
    )
    parser.add_argument("--version", help="the weights' version name (default: from the data)")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    try:
        return run(args, argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    _check_destinations(args.out, args.report)
    try:
        import matplotlib  # noqa: F401  (only checked here: the report's plot needs it)
        import numpy as np
    except ImportError as exc:
        raise UsageError(
            f"train needs numpy and matplotlib ({exc.name} is missing): "
            "pip install 'hybrid-gateway[train]'"
        ) from None
    from gateway.routing.learned import LearnedClassifier, parse_model
    from gateway.routing.training.data import TrainingDataError, read_examples
    from gateway.routing.training.dataset import build_dataset, hash_bucket
    from gateway.routing.training.metrics import curve, quality, random_quality
    from gateway.routing.training.model import weights_document
    from gateway.routing.training.report import (
        operating_point_accuracy,
        render_plot,
        render_report,
        write_files,
    )
    from gateway.routing.training.select import fit_selected

    try:
        examples = read_examples(args.data)
    except TrainingDataError as exc:
        raise UsageError(str(exc)) from None
    held_mask = [hash_bucket(e.key, HOLDOUT_SALT, 100) < HOLDOUT_PERCENT for e in examples]
    train_rows = np.array([i for i, h in enumerate(held_mask) if not h], dtype=np.intp)
    held_rows = np.array([i for i, h in enumerate(held_mask) if h], dtype=np.intp)
    if len(held_rows) == 0 or len(train_rows) == 0:
        raise UsageError(
            f"{args.data}: too few lines to fit: too few different requests to hold out "
            f"{HOLDOUT_PERCENT} % and fit on the rest (equal requests stay on one side; "
            f"{len(held_rows)} of {len(examples)} lines fell in the held-out slice)"
        )
    if len({examples[i].gain for i in train_rows}) < 2:
        raise UsageError(
            f"{args.data}: too few lines to fit: the {len(train_rows)} lines left to fit on "
            f"after holding out {len(held_rows)} all have the same label"
        )
    data = build_dataset(examples)
    model, selection = fit_selected(data, train_rows)

    raw = args.data.read_bytes()
    data_sha = hashlib.sha256(raw).hexdigest()
    version = args.version or f"trained-{data_sha[:12]}"
    command = "python -m gateway train " + shlex.join(argv)
    training = {
        "data": args.data.name,
        "data_sha256": data_sha,
        "rows": len(train_rows),
        "held_out_rows": len(held_rows),
        "domains": len(set(data.domains[train_rows].tolist())) if data.domains is not None else 0,
        "target": "cloud_ok - edge_ok",
        "selection": {
            "folds": selection.folds,
            "by": "domain" if selection.by_domain else "request hash",
            "chosen": selection.chosen.as_dict(),
            "candidates": [
                {"label": c.label, **c.as_dict(), **q.as_dict()} for c, q in selection.table
            ],
        },
        "command": "python -m gateway train --data DATA --out OUT",
    }
    doc = weights_document(model, version=version, training=training)
    # The held-out slice is scored by the written weights through the gateway's own code.
    classifier = LearnedClassifier(parse_model(doc, source=str(args.out)))
    held = [examples[i] for i in held_rows]
    scores = np.array(
        [classifier.classify(list(e.messages), max_tokens=e.max_tokens).score for e in held]
    )
    edge, cloud = data.edge[held_rows], data.cloud[held_rows]
    lengths = data.lengths[held_rows]
    routers = {
        "trained": quality(scores, edge, cloud),
        "prompt length": quality(lengths, edge, cloud),
        "random (mean of 50 seeds)": random_quality(edge, cloud),
    }
    point = calibrate(scores.tolist(), args.target_edge_share)
    edge_count = sum(1 for s in scores if s <= point.cloud_above)
    length_cloud = np.argsort(-lengths, kind="stable")[: len(held) - edge_count]
    length_tiers = np.zeros(len(held), dtype=bool)
    length_tiers[length_cloud] = True
    summary: dict[str, object] = {
        "data": args.data.name,
        "data_sha256": data_sha,
        "weights": args.out.name,
        "version": version,
        "command": command,
        "lines": len(examples),
        "train_lines": len(train_rows),
        "chosen": selection.chosen.label,
        "held_out": {
            "lines": len(held),
            "edge_accuracy": round(float(edge.mean()), 4),
            "cloud_accuracy": round(float(cloud.mean()), 4),
            "routers": {name: q.as_dict() for name, q in routers.items()},
            **(
                {}
                if cloud.mean() > edge.mean()
                else {
                    "note": "the cloud is not more accurate than the edge on this slice: "
                    "APGR and CPT are not defined"
                }
            ),
        },
        "operating_point": {
            "target_edge_share": args.target_edge_share,
            "cloud_above": point.cloud_above,
            "edge_share": round(point.edge_share, 4),
            "accuracy": round(operating_point_accuracy(scores, point.cloud_above, edge, cloud), 4),
            "length_accuracy": round(float(np.where(length_tiers, cloud, edge).mean()), 4),
        },
        "selection": training["selection"],
    }
    files = {args.out: (_json(doc)).encode()}
    if args.report is not None:
        xs, ys = curve(scores, edge, cloud)
        rng = np.random.default_rng(0)
        random_ys = np.mean(
            [curve(rng.random(len(held)), edge, cloud)[1] for _ in range(50)], axis=0
        )
        plot = render_plot(
            {
                f"trained ({version})": (xs, ys),
                "prompt length": curve(lengths, edge, cloud),
                "random (mean of 50)": (xs, random_ys),
            },
            float(edge.mean()),
            float(cloud.mean()),
            title=f"Held-out slice of {args.data.name} ({len(held)} lines)",
        )
        decisions = [
            {
                "line": e.line,
                "score": float(s),
                "tier": "cloud" if s > point.cloud_above else "edge",
            }
            for e, s in zip(held, scores, strict=True)
        ]
        for name, content in render_report(summary, decisions, plot).items():
            files[args.report / name] = content
    try:
        write_files(files)
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename}: {exc.strerror}") from None
    q = routers["trained"].as_dict()
    length_q = routers["prompt length"].as_dict()
    print(
        f"{args.out}: {selection.chosen.label}; held-out APGR {q['apgr']} "
        f"(prompt length {length_q['apgr']}); cloud_above {point.cloud_above} keeps "
        f"{point.edge_share:.1%} at the edge"
        + (f"; report in {args.report}" if args.report else "")
    )
    return 0


def _json(doc: object) -> str:
    import json

    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def _check_destinations(out: Path, report: Path | None) -> None:
    """Refuse, before any work, destinations that cannot be written."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; name the weights file to write")
    if report is not None and report.exists() and not report.is_dir():
        raise UsageError(f"--report {report} exists and is not a directory")


__all__ = ["main"]
