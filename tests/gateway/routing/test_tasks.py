"""Open-ended task priors: code, proofs and analyses the dev set cannot teach go to the cloud."""

from __future__ import annotations

import pytest

from gateway.routing.classifier import Complexity
from gateway.routing.features import extract_features
from gateway.routing.learned import load_learned_classifier
from gateway.routing.tasks import ANALYSIS_TASK, CODE_TASK, PROOF_TASK

CLASSIFIER = load_learned_classifier(None)
SHIPPED_THRESHOLD = 0.55


def classify(text: str, max_tokens: int | None = None) -> Complexity:
    return CLASSIFIER.classify([{"role": "user", "content": text}], max_tokens=max_tokens)


@pytest.mark.parametrize(
    ("text", "task"),
    [
        ("Write a Python function that merges two sorted lists, with unit tests.", CODE_TASK),
        ("Why does this fail?\n```python\nfor i in range(3)\n    print(i)\n```", CODE_TASK),
        ("Implement an LRU cache class in Java.", CODE_TASK),
        ("Prove that there are infinitely many primes.", PROOF_TASK),
        ("Derive the closed form of the geometric series, using induction.", PROOF_TASK),
        ("Compare PostgreSQL and MySQL for an analytics workload and recommend one.",
         ANALYSIS_TASK),
        ("What are the trade-offs of microservices versus a monolith?", ANALYSIS_TASK),
    ],
)  # fmt: skip
def test_open_ended_tasks_get_their_floor_and_say_why(text: str, task) -> None:
    result = classify(text)
    assert result.score >= task.floor > SHIPPED_THRESHOLD
    assert result.signals[0] == task.label


@pytest.mark.parametrize(
    "text",
    ["Say hello in French.", "What is the capital of France?", "Tell me a joke about cats.",
     "Translate 'good morning' into Spanish."],
)  # fmt: skip
def test_small_talk_stays_below_the_threshold(text: str) -> None:
    result = classify(text)
    assert result.score <= SHIPPED_THRESHOLD
    assert result.signals[0] not in {CODE_TASK.label, PROOF_TASK.label, ANALYSIS_TASK.label}


def test_multiple_choice_prompts_keep_their_learned_score() -> None:
    # The training distribution: lettered options. Task words must not override the model.
    question = (
        "A student wants to prove a point about the weather. Which instrument measures rain?\n"
        "A. rain gauge\nB. barometer\nC. thermometer\nD. anemometer\nAnswer:"
    )
    messages = [{"role": "user", "content": question}]
    features = extract_features(messages, max_tokens=None)
    model = CLASSIFIER.model
    learned = round(model.calibrate(model.raw(features)), 4)
    assert learned < PROOF_TASK.floor  # so a floor, if applied, would show
    result = classify(question)
    assert result.score == learned
    assert PROOF_TASK.label not in result.signals


def test_a_learned_score_above_the_floor_is_kept() -> None:
    long_code = "Write a Python function for this.\n" + "def f(x):\n    return x\n" * 400
    result = classify(long_code, max_tokens=4096)
    assert result.score >= CODE_TASK.floor
    assert 0.0 <= result.score <= 1.0
