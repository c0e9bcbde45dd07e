"""A policy's ``routing.classifier.model``: by path or by shipped version, and refused with
its key and line when the weights cannot be used, while a running gateway keeps its policy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gateway.policy.errors import PolicyError
from gateway.routing.learned import DEFAULT_MODEL_PATH, MODELS_DIR
from gateway.routing.state import PolicyHolder, load_routing_state

HEAD = """\
version: 1
tiers:
  edge: {context_window: 2048, nodes: [{url: "http://127.0.0.1:1", model: e}]}
  cloud: {context_window: 8192, nodes: [{url: "http://127.0.0.1:2", model: c}]}
routing:
  cloud_above: 0.5
  classifier:
    kind: learned
"""
MODEL_LINE = 9  # the line `model:` is on, below


def policy(tmp_path: Path, model: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(HEAD + f"    model: {model}\n", encoding="utf-8")
    return path


def test_the_default_is_complexity_v2_and_v1_stays_loadable_by_version(tmp_path: Path) -> None:
    assert DEFAULT_MODEL_PATH == MODELS_DIR / "complexity-v2.json"
    bare = tmp_path / "bare.yaml"
    bare.write_text(HEAD, encoding="utf-8")
    assert load_routing_state(bare).classifier.name == "learned:complexity-v2"
    for version in ("complexity-v1", "complexity-v2-selected"):
        state = load_routing_state(policy(tmp_path, version))
        assert state.classifier.name == f"learned:{version}"


def test_the_locked_test_ledger_names_the_shipped_files() -> None:
    """Every shipped weights file of issue 14 was scored on the locked test exactly as it
    ships (same bytes), once."""
    ledger = MODELS_DIR.parents[2] / "bench" / "locked_test_ledger.jsonl"
    entries = [json.loads(line) for line in ledger.read_text(encoding="utf-8").splitlines()]
    for name in ("complexity-v2.json", "complexity-v2-selected.json"):
        digest = hashlib.sha256((MODELS_DIR / name).read_bytes()).hexdigest()
        assert [e["model"] for e in entries if e["sha256"] == digest] == [name]


def test_a_relative_path_is_read_beside_the_policy(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    doc = json.loads((MODELS_DIR / "complexity-v1.json").read_text(encoding="utf-8"))
    doc["version"] = "mine-3"
    (tmp_path / "weights" / "mine.json").write_text(json.dumps(doc), encoding="utf-8")
    path = policy(tmp_path, "weights/mine.json")
    assert load_routing_state(path).classifier.name == "learned:mine-3"


@pytest.mark.parametrize(
    ("model", "content", "message"),
    [
        ("missing.json", None, "cannot read"),
        ("w.json", "{not json", "not valid JSON"),
        ("w.json", "[]", "not a JSON object"),
        (
            "w.json",
            '{"format": "gateway.complexity-model/1", "feature_set_version": 1}',
            "version must be a non-empty string",
        ),
        ("complexity-v9", None, "no shipped weights named 'complexity-v9' (shipped: "),
    ],
)
def test_unusable_weights_are_refused_with_key_and_line(
    tmp_path: Path, model: str, content: str | None, message: str
) -> None:
    if content is not None:
        (tmp_path / model).write_text(content, encoding="utf-8")
    path = policy(tmp_path, model)
    with pytest.raises(PolicyError) as info:
        load_routing_state(path)
    assert info.value.key == "routing.classifier.model"
    assert info.value.line == MODEL_LINE
    assert str(info.value).startswith(f"{path}:{MODEL_LINE}: routing.classifier.model: ")
    assert "cannot load classifier weights" in str(info.value)
    assert message in str(info.value)


async def test_a_running_gateway_keeps_its_policy_when_new_weights_are_corrupt(
    tmp_path: Path,
) -> None:
    weights = tmp_path / "w.json"
    weights.write_bytes((MODELS_DIR / "complexity-v1.json").read_bytes())
    path = policy(tmp_path, "w.json")
    holder = PolicyHolder(path, load_routing_state(path))
    before = holder.current
    weights.write_text('{"format": "gateway.complexity-model/1"', encoding="utf-8")  # cut short
    assert await holder.reload() is False
    assert holder.current is before
    assert holder.current.classifier.name == "learned:complexity-v1"
    assert holder.last_error is not None
    assert f"{path}:{MODEL_LINE}: routing.classifier.model: " in holder.last_error
    # Mended, the next reload takes it.
    weights.write_bytes((MODELS_DIR / "complexity-v2.json").read_bytes())
    assert await holder.reload() is True
    assert holder.current.classifier.name == "learned:complexity-v2"
