"""Routing quality and decision latency of the learned complexity classifier.

    .venv/bin/python bench/routing_quality.py \\
        [--data /work/shared/routing-dev/mmlu_dev.jsonl] [--plot docs/routing_quality.png]

Quality: APGR, CPT(50%) and CPT(80%) on the labelled dev set, for

- ``learned (CV)``: out-of-fold scores from leave-one-domain-out cross-validation, the
  whole training pipeline refitted 28 times (``scripts/train_classifier.py``'s own code),
  so no prompt is scored by a model that saw its subject: the honest figure;
- ``learned (in-sample)``: the shipped weights scored on the data they were fitted on:
  optimistic, printed only to show the gap;
- ``length``: prompt tokens (tiktoken cl100k_base); ``random``: mean of seeds 0..49.
  Both must match the dev set README's reference values (0.568 and 0.497).

Latency: ``classify()`` of the shipped classifier, pinned to one CPU core, on a
2,000-token conversation, a single 2,000-token message and short dev prompts; p50/p99 in
microseconds. Bounded: about a minute on an idle core (the CV is most of it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.protocol import ChatMessage  # noqa: E402
from gateway.routing.classifier import Classifier  # noqa: E402
from gateway.routing.learned import load_learned_classifier  # noqa: E402
from gateway.routing.tokens import count_tokens, encoding  # noqa: E402
from scripts.train_classifier import (  # noqa: E402
    RANDOM_SEEDS,
    Dataset,
    cross_validate,
    curve,
    length_scores,
    load_dataset,
    metrics,
    random_metrics,
)

DEFAULT_DATA = ROOT.parent / "shared" / "routing-dev" / "mmlu_dev.jsonl"
DEFAULT_PLOT = ROOT / "docs" / "routing_quality.png"


def in_sample_scores(classifier: Classifier, data: Dataset) -> np.ndarray:
    return np.array(
        [
            classifier.classify([ChatMessage(role="user", content=p)], max_tokens=None).score
            for p in data.prompts
        ]
    )


def long_conversation(data: Dataset, tokens: int = 2000) -> list[ChatMessage]:
    """System prompt + alternating turns of dev-set text, exactly ``tokens`` tokens in all."""
    enc = encoding()
    pool = enc.encode_ordinary("\n".join(data.prompts[:400]))
    messages: list[ChatMessage] = [
        ChatMessage(role="system", content="You are a careful assistant. Answer concisely.")
    ]
    question = "Given all of the above, which answer is right, and why? Explain step by step."
    budget = tokens - count_tokens("\n".join([str(messages[0]["content"]), question]))
    turn, start = 0, 0
    while budget - start > 0:
        size = min(300, budget - start)
        role = "user" if turn % 2 == 0 else "assistant"
        messages.append(ChatMessage(role=role, content=enc.decode(pool[start : start + size])))
        start += size
        turn += 1
    messages.append(ChatMessage(role="user", content=question))
    return messages


def timings_us(
    classifier: Classifier, cases: Sequence[Sequence[ChatMessage]], repeats: int
) -> tuple[float, float]:
    """p50 and p99 of single classify() calls, after one warm-up pass."""
    for messages in cases:
        classifier.classify(messages, max_tokens=512)
    samples: list[int] = []
    for _ in range(repeats):
        for messages in cases:
            started = time.perf_counter_ns()
            classifier.classify(messages, max_tokens=512)
            samples.append(time.perf_counter_ns() - started)
    p50, p99 = np.percentile(np.array(samples, dtype=float) / 1000, [50, 99])
    return float(p50), float(p99)


def plot(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], data: Dataset) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, (xs, ys) in curves.items():
        ax.plot(100 * xs, ys, marker="o", markersize=3, label=label)
    ax.axhline(data.edge.mean(), color="grey", linestyle=":", linewidth=1)
    ax.axhline(data.cloud.mean(), color="grey", linestyle="--", linewidth=1)
    ax.text(101, data.edge.mean(), "edge only", va="center", fontsize=8)
    ax.text(101, data.cloud.mean(), "cloud only", va="center", fontsize=8)
    ax.set_xlabel("share of requests sent to the cloud (%)")
    ax.set_ylabel("accuracy on the dev set")
    ax.set_title("Routing quality, MMLU dev set (7699 prompts, 28 subjects)", fontsize=10)
    ax.set_xlim(0, 112)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    parser.add_argument("--repeats", type=int, default=300, help="latency passes per case set")
    parser.add_argument("--cpu", type=int, default=None, help="core to pin to (default: last)")
    args = parser.parse_args(argv)

    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    started = time.perf_counter()
    classifier = load_learned_classifier(None)
    data = load_dataset(args.data)

    oof = cross_validate(data)
    shipped = in_sample_scores(classifier, data)
    length = length_scores(data)
    rows = {
        "learned (CV, leave-one-domain-out)": metrics(oof, data.edge, data.cloud),
        "learned (in-sample, optimistic)": metrics(shipped, data.edge, data.cloud),
        "length (prompt tokens)": metrics(length, data.edge, data.cloud),
        f"random (mean of {RANDOM_SEEDS} seeds)": random_metrics(data),
    }
    print(f"## Routing quality: {args.data.name}, {len(data.prompts)} prompts\n")
    print("| router | APGR | CPT(50%) | CPT(80%) |\n|---|---:|---:|---:|")
    for name, m in rows.items():
        print(f"| {name} | {m['apgr']:.3f} | {m['cpt50']:.1f}% | {m['cpt80']:.1f}% |")

    rng = np.random.default_rng(0)
    random_ys = np.mean(
        [curve(rng.random(len(data.prompts)), data.edge, data.cloud)[1] for _ in range(50)],
        axis=0,
    )
    xs = curve(oof, data.edge, data.cloud)[0]
    plot(
        args.plot,
        {
            "learned, out-of-fold by domain": curve(oof, data.edge, data.cloud),
            "length in tokens": curve(length, data.edge, data.cloud),
            "random (mean of 50)": (xs, random_ys),
        },
        data,
    )
    print(f"\nplot: {args.plot}")

    conversation = long_conversation(data)
    single = [
        ChatMessage(
            role="user",
            content=encoding().decode(encoding().encode_ordinary("\n".join(data.prompts))[:2000]),
        )
    ]
    short = [[ChatMessage(role="user", content=p)] for p in data.prompts[::40]]
    joined = "\n".join(str(m["content"]) for m in conversation)
    print(
        f"\n## Decision latency: {classifier.name}, classify(), one core (cpu {cpu}), "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus\n"
    )
    print("| input | p50 µs | p99 µs |\n|---|---:|---:|")
    cases = {
        f"conversation, {len(conversation)} messages, {count_tokens(joined)} tokens": [
            conversation
        ],
        f"one user message, {count_tokens(str(single[0]['content']))} tokens": [single],
        f"short dev prompts ({len(short)}, median "
        f"{int(np.median([count_tokens(p) for p in data.prompts[::40]]))} tokens)": short,
    }
    for name, case in cases.items():
        repeats = args.repeats * 10 if len(case) == 1 else max(1, args.repeats // 10)
        p50, p99 = timings_us(classifier, case, repeats)
        print(f"| {name} | {p50:.0f} | {p99:.0f} |")
    print(f"\ntotal {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
