"""Cost of routing on what will be sent (gateway/routing/fitted.py), before and after.

    .venv/bin/python bench/fitted_routing.py [--runs 2000]

In one process and one run, with the shipped policy (cloud window raised to 8192, so the
tiers' views differ) and the learned classifier, for a short and a long session
conversation (3 documents of ~1,100 tokens, their summaries, then "thanks! bye"):

- ``before``: ``decide()`` on the whole merged conversation, then fitting for one tier
  (what a request paid before: fitting ran at the attempt);
- ``after``: fitting for both tiers (``TierPrompts.views()``, cold token counts) and
  ``decide_fitted()`` on the judged view; the attempt then reuses that fitting;
- ``decide_fitted`` alone, on views already fitted (the decision itself).

Prints p50/p99 in microseconds. Pure computation: no servers, no I/O.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from gateway.policy.parse import load_policy
from gateway.routing.classifier import build_classifier
from gateway.routing.decide import RoutingRequest, decide
from gateway.routing.fitted import decide_fitted
from gateway.sessions.prompts import TierPrompt, TierPrompts
from hybrid_common.protocol import ChatCompletionRequest, ChatMessage

ROOT = Path(__file__).resolve().parent.parent
Fitter = Callable[[], TierPrompts]


def document(n: int) -> str:
    return f"Please summarize document {n}. " + (
        "The quick brown fox jumps over the lazy dog near the river bank. " * 80
    )


def long_conversation() -> list[ChatMessage]:
    messages: list[ChatMessage] = []
    for n in range(3):
        messages += [
            {"role": "user", "content": document(n)},
            {"role": "assistant", "content": "Summary: " + "the fox meets the dog. " * 50},
            {"role": "user", "content": "thanks!"},
            {"role": "assistant", "content": "You're welcome."},
        ]
    return [*messages, {"role": "user", "content": "thanks! bye"}]


SHORT: list[ChatMessage] = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]


def timed(fn: Callable[[], object], runs: int) -> str:
    samples: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    p50, p99 = samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return f"p50 {p50:7.0f} us  p99 {p99:7.0f} us"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    policy = load_policy(ROOT / "policies" / "default.yaml")
    cloud = dataclasses.replace(policy.tiers["cloud"], context_window=8192)
    policy = dataclasses.replace(policy, tiers={**policy.tiers, "cloud": cloud})
    spec = policy.routing.classifier
    classifier = build_classifier(spec.kind, spec.model_path)
    for name, conversation in (("short", SHORT), ("long", long_conversation())):
        request = RoutingRequest(messages=conversation)
        body: ChatCompletionRequest = {"messages": conversation}

        def fitted(body: ChatCompletionRequest = body) -> TierPrompts:
            return TierPrompts(policy=policy, body=body, fit_context=True)

        def before(request: RoutingRequest = request, fitted: Fitter = fitted) -> None:
            fitted().prompt(decide(policy, classifier, request).tier)

        def after(request: RoutingRequest = request, fitted: Fitter = fitted) -> None:
            decide_fitted(policy, classifier, request, fitted().views())

        views = fitted().views()

        def decision(request: RoutingRequest = request, views: list[TierPrompt] = views) -> None:
            decide_fitted(policy, classifier, request, views)

        judged = decide_fitted(policy, classifier, request, views)
        dropped = {view.tier: view.dropped for view in views}
        print(f"{name}: {len(conversation)} messages, turns left out {dropped}")
        print(f"  routed {judged.tier}: {judged.reason}")
        print(f"  before: decide(whole) + fit one tier    {timed(before, args.runs)}")
        print(f"  after:  fit both tiers + decide_fitted  {timed(after, args.runs)}")
        print(f"  decide_fitted on fitted views           {timed(decision, args.runs)}")


if __name__ == "__main__":
    main()
