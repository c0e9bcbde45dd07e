"""Train the shipped default classifier under the evaluation protocol of docs/classifier.md.

    .venv/bin/python scripts/train_classifier.py \\
        --data ../shared/routing-dev/mmlu_dev.jsonl \\
        --out gateway/routing/models/complexity-v2.json [--skip-nested]

Only the development rows of the locked split (``bench/routing_protocol.py``) are read for
fitting and selection; the locked test rows are never touched here (their scoring is
``bench/routing_locked_test.py``). Steps:

1. the development estimate, per kind of traffic, by nested cross-validation: for *unseen
   subjects*, leave one development subject out (21 outer folds); for *new prompts, seen
   subjects*, 5 outer folds by prompt hash. Inside every outer fold the candidate is chosen
   by leave-one-subject-out CV (``gateway.routing.training.select``), so each figure
   estimates the whole procedure, selection included; length and random in the same run;
2. selection on the whole development set by the same rule, and the refit of the winner;
3. the weights file, recording all of it (the selection table, the nested estimates).

Deterministic: no random state enters the fit; the random baseline uses seeds 0..49. About
10 minutes on one busy core with the nested estimate, 30 s without.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.routing_protocol import KIND_TITLES, load_split  # noqa: E402
from gateway.routing.training.data import read_examples  # noqa: E402
from gateway.routing.training.dataset import Dataset, build_dataset, hash_bucket  # noqa: E402
from gateway.routing.training.fit import LENGTH_ONLY  # noqa: E402
from gateway.routing.training.metrics import Quality, quality, random_quality  # noqa: E402
from gateway.routing.training.model import weights_document  # noqa: E402
from gateway.routing.training.select import fit_selected, nested_scores  # noqa: E402

MODEL_VERSION = "complexity-v2"
NEW_PROMPT_FOLDS = 5
REFERENCE_CHECKS = 8
FOLD_SALT = "gateway-routing-dev-folds-v1"


def _row(q: Quality) -> dict[str, float | None]:
    return q.as_dict()


def nested_estimates(data: Dataset, dev: np.ndarray) -> dict[str, object]:
    """Per kind: the procedure's pooled out-of-fold quality, length and random on the same rows."""
    assert data.domains is not None
    subjects = sorted(set(data.domains[dev].tolist()))
    kinds = {
        "unseen_subjects": [dev[data.domains[dev] == s] for s in subjects],
        "new_prompts": [
            dev[[hash_bucket(data.keys[i], FOLD_SALT, NEW_PROMPT_FOLDS) == f for i in dev]]
            for f in range(NEW_PROMPT_FOLDS)
        ],
    }
    out: dict[str, object] = {}
    for kind, folds in kinds.items():
        started = time.perf_counter()
        scores, chosen = nested_scores(data, dev, folds)
        order = np.concatenate(folds)
        edge, cloud = data.edge[order], data.cloud[order]
        figures = {
            "learned": _row(quality(scores, edge, cloud)),
            "length": _row(quality(data.lengths[order], edge, cloud)),
            "random": _row(random_quality(edge, cloud)),
        }
        picks: dict[str, int] = {}
        for c in chosen:
            picks[c.label] = picks.get(c.label, 0) + 1
        out[kind] = {"outer_folds": len(folds), "rows": len(order), **figures, "chosen": picks}
        print(
            f"\n{KIND_TITLES[kind]}: {len(folds)} outer folds "
            f"({time.perf_counter() - started:.0f}s)"
        )
        for name in ("learned", "length", "random"):
            m = figures[name]
            print(
                f"  {name:8s} APGR {m['apgr']:.3f}  CPT(50%) {m['cpt50']:.1f}%  "
                f"CPT(80%) {m['cpt80']:.1f}%"
            )
        print(f"  chosen in the outer folds: {picks}")
    return out


def shipping_rule(nested: dict[str, object]) -> list[str]:
    """The kinds on which the procedure's nested estimate is below length's."""
    behind = []
    for kind, figures in nested.items():
        assert isinstance(figures, dict)
        if figures["learned"]["apgr"] < figures["length"]["apgr"]:
            behind.append(KIND_TITLES[kind])
    return behind


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the routing dev set (JSONL)")
    parser.add_argument("--out", type=Path, required=True, help="weights file to write")
    parser.add_argument("--skip-nested", action="store_true", help="no nested CV estimate")
    parser.add_argument(
        "--selected",
        action="store_true",
        help="write the selected model whatever the shipping rule says (not for shipping: "
        "to measure what training on these subjects gives), as complexity-v2-selected",
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    split = load_split(args.data)
    examples = read_examples(args.data)
    data = build_dataset(examples)
    dev = np.array(split.rows("dev"))
    print(
        f"{len(dev)} development rows of {len(data)}; "
        f"locked subjects: {', '.join(split.locked_subjects)}"
    )

    nested = {} if args.skip_nested else nested_estimates(data, dev)
    model, selection = fit_selected(data, dev)
    behind = shipping_rule(nested)
    version = MODEL_VERSION + ("-selected" if args.selected else "")
    if behind and not args.selected:
        # The protocol's shipping rule: the procedure must not lose to length on any kind.
        model = fit_selected(data, dev, [LENGTH_ONLY])[0]
        print(
            f"\nshipping rule: the procedure is behind length on {', '.join(behind)}: length alone"
        )
    print(f"\nselection on the development set ({selection.folds} subjects, leave one out):")
    for config, q in selection.table:
        mark = "*" if config == model.config else " "
        print(
            f" {mark} {config.label:42s} APGR {q.apgr:.4f}  CPT(50%) {q.cpt50:.1f}%  "
            f"CPT(80%) {q.cpt80:.1f}%"
        )

    training = {
        "data": args.data.name,
        "data_sha256": hashlib.sha256(args.data.read_bytes()).hexdigest(),
        "protocol": "docs/classifier.md, Evaluation protocol (issue 14)",
        "split": split.summary(),
        "rows": len(dev),
        "domains": len(set(data.domains[dev].tolist())) if data.domains is not None else 0,
        "target": "cloud_correct - edge_correct",
        "selection": {
            "method": f"leave-one-subject-out over the {selection.folds} development subjects",
            "selected": selection.chosen.as_dict(),
            "shipped": model.config.as_dict(),
            "shipping_rule": (
                "ignored (--selected): not for shipping"
                if args.selected
                else f"the nested estimate is behind length on {', '.join(behind)}: length alone"
                if behind
                else "the nested estimate is at least length's on every kind"
                if nested
                else "not applied (--skip-nested)"
            ),
            "candidates": [
                {**c.as_dict(), "label": c.label, **_row(q)} for c, q in selection.table
            ],
        },
        "nested_cv": nested,
        "command": "scripts/train_classifier.py --data DATA --out OUT",
    }
    doc = weights_document(model, version=version, training=training)
    # A few development prompts and their scores: the runtime's tests replay them.
    picks = dev[np.linspace(0, len(dev) - 1, REFERENCE_CHECKS).round().astype(np.intp)]
    doc["checks"] = [
        {"prompt": examples[i].messages[0]["content"], "score": round(float(s), 6)}
        for i, s in zip(picks, model.score(data, picks), strict=True)
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(
        f"\nwrote {args.out} ({args.out.stat().st_size} bytes) "
        f"in {time.perf_counter() - started:.0f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
