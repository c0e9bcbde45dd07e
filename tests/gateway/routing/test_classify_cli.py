"""``python -m gateway classify``: the real command in a subprocess, and its calibration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli.classify import calibrate

ROOT = Path(__file__).resolve().parents[3]
# The dev set lies in shared/ beside the checkout (as in CI), not inside the repo.
DEV = ROOT.parent / "shared" / "routing-dev" / "mmlu_dev.jsonl"
POLICY = """\
version: 1
tiers:
  edge: {{context_window: 2048, nodes: [{{url: "http://127.0.0.1:1", model: edge-m}}]}}
  cloud: {{context_window: 8192, nodes: [{{url: "http://127.0.0.1:2", model: cloud-m}}]}}
routing:
  cloud_above: {cloud_above}
  classifier: {{kind: learned}}
  rules:
    - {{when: {{header: {{x-app-plan: free}}}}, tier: edge, reason: free-plan}}
"""


def write_policy(tmp_path: Path, cloud_above: float = 0.55) -> Path:
    path = tmp_path / f"policy-{cloud_above}.yaml"
    path.write_text(POLICY.format(cloud_above=cloud_above), encoding="utf-8")
    return path


def classify(policy: Path, stdin: bytes, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "classify", "--policy", str(policy), *extra],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def lines(*requests: object) -> bytes:
    return b"".join(
        (r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in requests
    )


def prompts(n: int) -> list[str]:
    """Every 20th dev prompt: all 28 subjects, a realistic spread of scores."""
    if DEV.exists():
        rows = [json.loads(x) for x in DEV.read_text(encoding="utf-8").split("\n") if x]
        return [str(r["prompt"]) for r in rows[::20]][:n]
    words = ["why", "is", "the", "sky", "blue", "and", "how", "does", "light", "scatter"]
    return [
        f"Question {i}: " + " ".join(words[(i * 7 + k) % len(words)] for k in range(3 + i % 90))
        for i in range(n)
    ]


def test_round_trip_decides_every_line(tmp_path: Path) -> None:
    policy = write_policy(tmp_path)
    done = classify(
        policy,
        lines(
            {"id": "a", "messages": [{"role": "user", "content": "hi"}]},
            {
                "id": 2,
                "messages": [
                    {"role": "system", "content": "Be exact."},
                    {"role": "user", "content": prompts(1)[0]},
                ],
                "max_tokens": 4096,
            },
            {
                "id": "free",
                "messages": [{"role": "user", "content": "x"}],
                "headers": {"X-App-Plan": "free"},
            },
            {"id": "pin", "messages": [{"role": "user", "content": "x"}], "model": "cloud"},
        ),
    )
    assert done.returncode == 0, done.stderr.decode()
    out = [json.loads(x) for x in done.stdout.decode().splitlines()]
    assert [o["id"] for o in out] == ["a", 2, "free", "pin"]
    for o in out:
        assert {"id", "tier", "score", "reason", "decision_us"} <= o.keys()
        assert o["tier"] in ("edge", "cloud")
        assert 0.0 <= o["score"] <= 1.0
        assert 0 < o["decision_us"] < 1_000_000
    for o in out[:2]:
        assert o["reason_kind"] == "score"
        assert o["tier"] == ("cloud" if o["score"] > 0.55 else "edge")
        assert o["reason"].startswith(f"score {o['score']:.2f}")
    assert out[2]["tier"] == "edge" and out[2]["reason"] == "rule free-plan"
    assert out[3]["tier"] == "cloud" and out[3]["reason_kind"] == "pinned:model"
    assert done.stderr == b""  # no calibration asked, nothing else to say


def test_bad_lines_get_error_lines_and_a_nonzero_exit(tmp_path: Path) -> None:
    done = classify(
        write_policy(tmp_path),
        lines(
            b"not json",
            {"id": 7, "messages": []},
            {"id": 8, "messages": [{"role": "wizard", "content": "hi"}]},
            {"id": 9, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1},
            {"id": 10, "messages": [{"role": "user", "content": "hi"}], "model": "nope"},
            {"id": 11, "messages": [{"role": "user", "content": "x"}], "headers": [1]},
            b'{"id": 12, "messages": [{"role": "user", "content": "caf\xff"}]}',
            b"",  # blank lines are skipped, not errors
            {"id": 13, "messages": [{"role": "user", "content": "still decided"}]},
        ),
    )
    assert done.returncode == 1
    assert b"Traceback" not in done.stderr
    out = [json.loads(x) for x in done.stdout.decode().splitlines()]
    assert [o["id"] for o in out] == [None, 7, 8, 9, 10, 11, None, 13]
    errors = [o for o in out if "error" in o]
    assert [e["line"] for e in errors] == [1, 2, 3, 4, 5, 6, 7]
    assert [e["error"]["code"] for e in errors] == [
        "invalid_json",
        "invalid_request",
        "invalid_request",
        "invalid_request",
        "model_not_found",
        "invalid_request",
        "invalid_json",
    ]
    assert errors[2]["error"]["param"] == "messages[0].role"
    assert out[-1]["tier"] in ("edge", "cloud")


def test_a_broken_policy_exits_2_with_the_key(tmp_path: Path) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text("version: 1\nrouting:\n  cloud_above: 7\n", encoding="utf-8")
    done = classify(policy, b"")
    assert done.returncode == 2
    assert b"Traceback" not in done.stderr
    assert b"error:" in done.stderr


def test_calibration_threshold_really_yields_the_target_share(tmp_path: Path) -> None:
    requests = [
        {"id": i, "messages": [{"role": "user", "content": p}]} for i, p in enumerate(prompts(300))
    ]
    done = classify(write_policy(tmp_path), lines(*requests), "--target-edge-share", "0.6")
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stderr.decode().strip().splitlines()[-1])["calibration"]
    assert summary["requests"] == 300 and summary["target_edge_share"] == 0.6
    threshold = summary["cloud_above"]
    scores = [json.loads(x)["score"] for x in done.stdout.decode().splitlines()]
    kept = sum(s <= threshold for s in scores)
    assert kept == round(summary["edge_share"] * 300)
    # Exactly 180 unless a tie of equal scores straddles the boundary (none on the dev set).
    assert abs(kept - 180) <= 3

    # Ship that threshold: the same requests now split as calibrated.
    again = classify(write_policy(tmp_path, threshold), lines(*requests))
    tiers = [json.loads(x)["tier"] for x in again.stdout.decode().splitlines()]
    assert tiers.count("edge") == kept and tiers.count("cloud") == 300 - kept


@pytest.mark.parametrize(
    ("scores", "share", "threshold", "edge_share"),
    [
        ([0.1, 0.2, 0.3, 0.4], 0.5, 0.25, 0.5),
        ([0.1, 0.2, 0.3, 0.4], 1.0, 0.4, 1.0),
        ([0.1, 0.2, 0.3, 0.4], 0.0, 0.0999, 0.0),
        ([0.0, 0.2], 0.0, 0.0, 0.5),  # cloud_above cannot go below 0: a score of 0 stays
        ([0.3, 0.3, 0.3, 0.9], 0.5, 0.3, 0.75),  # a tie cannot be split: all of it at the edge
    ],
)
def test_calibrate(scores: list[float], share: float, threshold: float, edge_share: float) -> None:
    result = calibrate(scores, share)
    assert result.cloud_above == pytest.approx(threshold)
    assert result.edge_share == pytest.approx(edge_share)


def test_calibrate_needs_scores() -> None:
    with pytest.raises(ValueError, match="no scores"):
        calibrate([], 0.5)


def test_target_share_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    done = classify(write_policy(tmp_path), b"", "--target-edge-share", "1.5")
    assert done.returncode == 2
    assert b"between 0 and 1" in done.stderr


def test_the_dry_run_applies_capabilities_as_the_server_does(tmp_path: Path) -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    result = classify(
        write_policy(tmp_path),
        lines(
            {"id": "forced", "messages": ask, "tools": tools, "tool_choice": "required"},
            {"id": "auto", "messages": ask, "tools": tools},
        ),
    )
    forced, auto = (json.loads(line) for line in result.stdout.splitlines())
    # The default cloud serves forced tool calls, the edge none: a simple prompt moves.
    assert (forced["tier"], forced["reason_kind"]) == ("cloud", "needs")
    assert forced["reason"] == "needs tool_choice_required: cloud"
    assert auto["error"]["param"] == "tools"  # no node serves tool_choice auto
    assert result.returncode != 0
