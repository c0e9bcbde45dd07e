"""Decision cost of the routing classifiers: ``classify()`` and the whole ``decide()``.

    .venv/bin/python bench/routing_quality.py [--data ../shared/routing-dev/mmlu_dev.jsonl]
        [--repeats 3000] [--cpu N]

Pinned to one CPU core; p50 and p99 in microseconds of single calls, on a 2,000-token
conversation (system prompt, eight turns of dev-set text, a question), a single 2,000-token
message and short dev prompts, for the shipped default (``complexity-v2``) and, in the same
run with the order alternated round by round, ``complexity-v1`` and the heuristic. The
budget (issue 14): <= 100 µs p50 and <= 500 µs p99 for the conversation.

Routing *quality* is measured elsewhere, under the protocol of docs/classifier.md:
``scripts/train_classifier.py`` (nested cross-validation on the development rows) and
``bench/routing_locked_test.py`` (the locked test, once per shipped model).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.policy.parse import load_policy  # noqa: E402
from gateway.routing.classifier import Classifier, HeuristicClassifier  # noqa: E402
from gateway.routing.decide import RoutingRequest, decide  # noqa: E402
from gateway.routing.learned import load_learned_classifier, shipped_model_path  # noqa: E402
from gateway.tokens import count_tokens, encoding  # noqa: E402
from hybrid_common.protocol import ChatMessage  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "routing-dev" / "mmlu_dev.jsonl"
POLICY = ROOT / "policies" / "default.yaml"


class HasPrompts(Protocol):
    @property
    def prompts(self) -> Sequence[str]: ...


def long_conversation(data: HasPrompts, tokens: int = 2000) -> list[ChatMessage]:
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
        text = enc.decode(pool[start : start + size])
        messages.append(
            ChatMessage(role="user", content=text)
            if turn % 2 == 0
            else ChatMessage(role="assistant", content=text)
        )
        start += size
        turn += 1
    messages.append(ChatMessage(role="user", content=question))
    return messages


class _Prompts:
    def __init__(self, prompts: Sequence[str]) -> None:
        self.prompts = prompts


def _timed(call: object, cases: Sequence[Sequence[ChatMessage]]) -> list[int]:
    samples = []
    for messages in cases:
        started = time.perf_counter_ns()
        call(messages)  # type: ignore[operator]
        samples.append(time.perf_counter_ns() - started)
    return samples


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3000, help="rounds per input")
    parser.add_argument("--cpu", type=int, default=None, help="core to pin to (default: last)")
    args = parser.parse_args(argv)

    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    rows = [json.loads(x) for x in args.data.read_text(encoding="utf-8").split("\n") if x]
    prompts = [str(r["prompt"]) for r in rows]
    conversation = long_conversation(_Prompts(prompts))
    enc = encoding()
    single = [
        ChatMessage(role="user", content=enc.decode(enc.encode_ordinary("\n".join(prompts))[:2000]))
    ]
    short = [[ChatMessage(role="user", content=p)] for p in prompts[::400]]
    inputs = {
        f"conversation, {len(conversation)} messages, "
        f"{count_tokens(chr(10).join(str(m['content']) for m in conversation))} tokens": [
            conversation
        ],
        "one user message, 2,000 tokens": [single],
        f"short dev prompts ({len(short)})": short,
    }
    policy = load_policy(POLICY)
    classifiers: dict[str, Classifier] = {
        "complexity-v2 (default)": load_learned_classifier(None),
        "complexity-v1": load_learned_classifier(shipped_model_path("complexity-v1")),
        "heuristic": HeuristicClassifier(),
    }
    print(
        f"## Decision cost, one core (cpu {cpu}), load average {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} cpus, {args.repeats} rounds, order alternated\n"
    )
    print("| classifier | input | classify() p50 / p99 µs | decide() p50 / p99 µs |")
    print("|---|---|---:|---:|")
    started = time.perf_counter()
    for input_name, cases in inputs.items():
        samples: dict[tuple[str, str], list[int]] = {}
        names = list(classifiers)
        for name in names:  # warm-up: the tokenizer, the regexes
            for m in cases:
                classifiers[name].classify(m, max_tokens=512)
        rounds = args.repeats if len(cases) == 1 else max(1, args.repeats // len(cases))
        for r in range(rounds):
            for name in names if r % 2 == 0 else reversed(names):
                c = classifiers[name]
                samples.setdefault((name, "classify"), []).extend(
                    _timed(lambda m, c=c: c.classify(m, max_tokens=512), cases)
                )
                samples.setdefault((name, "decide"), []).extend(
                    _timed(
                        lambda m, c=c: decide(
                            policy, c, RoutingRequest(messages=m, max_tokens=512)
                        ),
                        cases,
                    )
                )
        for name in names:
            cells = []
            for what in ("classify", "decide"):
                p50, p99 = np.percentile(np.array(samples[(name, what)]) / 1000, [50, 99])
                cells.append(f"{p50:.0f} / {p99:.0f}")
            print(f"| {name} | {input_name} | {cells[0]} | {cells[1]} |")
    print(f"\ntotal {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
