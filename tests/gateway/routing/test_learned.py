"""complexity-v1's weights file, the pure-Python inference and the loader's refusals.

v1 (vocabulary, many weighted features) exercises every part of the runtime; the shipped
default, complexity-v2, has its own tests in test_default_classifier.py."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.policy.errors import PolicyError
from gateway.routing.classifier import build_classifier
from gateway.routing.features import (
    ALL_FEATURE_GROUPS,
    FEATURE_NAMES,
    FEATURE_SET_VERSION,
    extract_features,
)
from gateway.routing.learned import (
    DEFAULT_MODEL_PATH,
    MODELS_DIR,
    LearnedClassifier,
    ModelFileError,
    load_learned_classifier,
    parse_model,
)
from gateway.routing.state import load_routing_state
from hybrid_common.protocol import ChatMessage

ROOT = Path(__file__).resolve().parents[3]
V1_PATH = MODELS_DIR / "complexity-v1.json"
DOC = json.loads(V1_PATH.read_text(encoding="utf-8"))
LAW = (
    "A landlord leased a commercial building to a tenant for a term of ten years. The lease "
    "contained a covenant that the tenant would not assign the lease without the landlord's "
    "consent. Three years later the tenant assigned the lease to a friend without consent, "
    "and the friend paid rent directly to the landlord, who accepted it for two years. "
    "Which of the following is the landlord's strongest argument?\n"
    "A. The assignment is void.\nB. The friend is liable on the covenant to pay rent.\n"
    "C. The tenant remains liable as a surety.\nD. The landlord waived nothing.\nAnswer:"
)


@pytest.fixture(scope="module")
def classifier() -> LearnedClassifier:
    return load_learned_classifier(V1_PATH)


def user(text: str) -> list[ChatMessage]:
    return [{"role": "user", "content": text}]


def test_the_v1_file_is_versioned_and_documents_its_training() -> None:
    assert DOC["format"] == "gateway.complexity-model/1"
    assert DOC["version"] == "complexity-v1"
    assert DOC["feature_set_version"] == FEATURE_SET_VERSION
    assert [f["name"] for f in DOC["features"]] == list(FEATURE_NAMES)
    sha = DOC["training"]["data_sha256"]
    assert len(sha) == 64 and int(sha, 16) >= 0
    assert DOC["training"]["rows"] == 7699 and DOC["training"]["domains"] == 28
    cv = DOC["cv"]
    assert "leave-one-domain-out" in cv["method"]
    # The out-of-fold figure beats both baselines computed in the same run.
    assert cv["learned"]["apgr"] > cv["length"]["apgr"] > cv["random"]["apgr"]
    assert cv["learned"]["cpt50"] < cv["length"]["cpt50"]
    assert V1_PATH.stat().st_size < 100_000  # "small": a review can read it


def test_runtime_reproduces_the_training_scripts_scores(classifier: LearnedClassifier) -> None:
    checks = DOC["checks"]
    assert len(checks) >= 5
    for check in checks:
        got = classifier.classify(user(check["prompt"]), max_tokens=None).score
        # numpy at training, pure Python here; the score itself is rounded to 4 digits.
        assert got == pytest.approx(check["score"], abs=1e-4), check["prompt"][:60]


def test_build_classifier_learned_uses_the_shipped_weights() -> None:
    built = build_classifier("learned", None)
    assert built.name == "learned:complexity-v2"
    assert build_classifier("learned", None, "complexity-v1").name == "learned:complexity-v1"
    assert build_classifier("learned", DEFAULT_MODEL_PATH).name == "learned:complexity-v2"
    assert built.classify(user(LAW), max_tokens=None) == load_learned_classifier().classify(
        user(LAW), max_tokens=None
    )


def test_scores_are_bounded_and_signals_are_short_words(classifier: LearnedClassifier) -> None:
    for messages in (user(""), user("hi"), user(LAW), user("x" * 200_000), []):
        c = classifier.classify(messages, max_tokens=None)
        assert 0.0 <= c.score <= 1.0
        assert len(c.signals) <= 4
        assert all(0 < len(s) <= 24 for s in c.signals), c.signals


def test_a_long_law_question_outranks_a_greeting(classifier: LearnedClassifier) -> None:
    law = classifier.classify(user(LAW), max_tokens=None)
    hello = classifier.classify(user("hi, how are you?"), max_tokens=None)
    assert law.score > hello.score
    assert any(s.endswith("tokens") for s in law.signals)  # the length explains it


def test_priors_push_deep_conversations_and_long_answers_up(
    classifier: LearnedClassifier,
) -> None:
    question = "What is the capital of France?"
    base = classifier.classify(user(question), max_tokens=None)
    long_answer = classifier.classify(user(question), max_tokens=4096)
    assert long_answer.score > base.score
    parts = classifier.model.contributions(extract_features(user(question), max_tokens=4096))
    assert parts["max_tokens_octaves"] > 0
    history: list[ChatMessage] = []
    for i in range(6):
        history += [
            {"role": "user", "content": f"Question {i} about France?"},
            {"role": "assistant", "content": "Paris."},
        ]
    deep = classifier.classify([*history, *user(question)], max_tokens=None)
    assert deep.score > base.score


def test_out_of_range_inputs_are_clipped_not_extrapolated(classifier: LearnedClassifier) -> None:
    model = classifier.model
    j = FEATURE_NAMES.index("choices")
    # Forty options: far outside the training range of "choices" (about four).
    many = "Pick one.\n" + "\n".join(f"{'ABCDEFGH'[i % 8]}. option {i}" for i in range(40))
    features = extract_features(user(many), max_tokens=None)
    assert features.values[j] == 40.0 > model.highs[j]
    at_edge = model.weights[j] * (model.highs[j] - model.means[j]) * model.inverse_stds[j]
    assert model.contributions(features)["choices"] == pytest.approx(at_edge)


def test_signals_explain_the_direction_of_the_score(classifier: LearnedClassifier) -> None:
    high = classifier.classify(user(LAW), max_tokens=4096)
    assert high.score >= 0.5
    assert "long answer asked" in high.signals
    low = classifier.classify(user("hi"), max_tokens=16)
    assert low.score < 0.5
    assert "short answer asked" in low.signals or "1 token" in low.signals


def test_scores_do_not_depend_on_string_hashing() -> None:
    # Word weights are summed over a set whose order follows PYTHONHASHSEED.
    code = (
        "import json, sys\n"
        "from gateway.routing.learned import load_learned_classifier, shipped_model_path\n"
        "c = load_learned_classifier(shipped_model_path('complexity-v1'))\n"
        "m = [{'role': 'user', 'content': sys.argv[1]}]\n"
        "print(json.dumps(c.model.raw(__import__('gateway.routing.features', fromlist=['x'])"
        ".extract_features(m, max_tokens=None))))\n"
    )
    outputs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", code, LAW],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        outputs.add(done.stdout.strip())
    assert len(outputs) == 1, outputs  # bit-identical raw scores


def test_calibration_maps_knots_onto_percentiles(classifier: LearnedClassifier) -> None:
    model = classifier.model
    knots = model.knots
    assert model.calibrate(knots[0] - 1.0) == 0.0
    assert model.calibrate(knots[-1] + 1.0) == 1.0
    assert model.calibrate(knots[50]) == pytest.approx(0.5, abs=0.011)
    grid = [knots[0] + (knots[-1] - knots[0]) * i / 500 for i in range(501)]
    mapped = [model.calibrate(x) for x in grid]
    assert mapped == sorted(mapped)  # monotone: the map never reorders requests


def _write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "model.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="other/9"), "format must be"),
        (lambda d: d.update(feature_set_version=999), "feature set"),
        (lambda d: d.update(version=""), "version"),
        (lambda d: d["features"].pop(), "features must list"),
        (lambda d: d["features"][3].update(weight=True), "finite number"),
        (lambda d: d["features"][3].update(std=0), "std must be > 0"),
        (lambda d: d["features"][8].update(low=5.0, high=1.0), "low must be <= high"),
        (lambda d: d.update(intercept="NaN"), "finite number"),
        (lambda d: d["calibration"].reverse(), "must not decrease"),
        (lambda d: d.update(vocabulary=[]), "vocabulary"),
    ],
)
def test_broken_weight_files_are_refused_with_the_reason(
    tmp_path: Path, mutate: object, message: str
) -> None:
    doc = copy.deepcopy(DOC)
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(ModelFileError, match=message):
        load_learned_classifier(_write(tmp_path, doc))


def test_unreadable_weight_files(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        load_learned_classifier(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_learned_classifier(bad)
    with pytest.raises(ModelFileError, match="not a JSON object"):
        parse_model([1, 2], source="inline")


def test_a_retrained_copy_loads_and_changes_scores(tmp_path: Path) -> None:
    doc = copy.deepcopy(DOC)
    doc["version"] = "complexity-test"
    doc["intercept"] += 10.0  # every raw score above the top knot
    custom = load_learned_classifier(_write(tmp_path, doc))
    assert custom.name == "learned:complexity-test"
    assert custom.classify(user("hi"), max_tokens=None).score == 1.0


def test_policy_with_a_broken_model_path_fails_to_load(tmp_path: Path) -> None:
    (tmp_path / "weights.json").write_text("[]", encoding="utf-8")
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\n"
        "tiers:\n"
        "  edge: {context_window: 2048, nodes: [{url: 'http://127.0.0.1:1', model: e}]}\n"
        "  cloud: {context_window: 8192, nodes: [{url: 'http://127.0.0.1:2', model: c}]}\n"
        "routing:\n"
        "  classifier: {kind: learned, model: weights.json}\n",
        encoding="utf-8",
    )
    with pytest.raises(PolicyError, match="not a JSON object"):
        load_routing_state(policy)


def _weighing_only(names: set[str]) -> dict[str, object]:
    doc = copy.deepcopy(DOC)
    for feature in doc["features"]:
        if feature["name"] not in names:
            feature["weight"] = 0.0
    return doc


@pytest.mark.parametrize(
    ("weighted", "groups"),
    [
        (set(), set()),
        ({"log_tokens_last", "code", "choices"}, set()),  # always computed
        ({"digit_frac"}, {"characters"}),
        ({"long_word_frac", "fill_blank"}, {"word_lengths", "phrases"}),
        ({"quotes"}, {"markers"}),
        (set(FEATURE_NAMES), set(ALL_FEATURE_GROUPS)),
    ],
)
def test_a_model_asks_for_the_optional_features_it_weighs(
    weighted: set[str], groups: set[str]
) -> None:
    model = parse_model(_weighing_only(weighted), source="test")
    assert model.feature_groups == groups


def test_v1_asks_for_every_group(classifier: LearnedClassifier) -> None:
    # With one skipped, test_runtime_reproduces_the_training_scripts_scores fails.
    assert classifier.model.feature_groups == ALL_FEATURE_GROUPS
