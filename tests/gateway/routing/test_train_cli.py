"""``python -m gateway train``: the round trip through a policy and ``classify``, determinism,
and a clear error (exit 2, nothing written) for every kind of bad input."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.cli.train import main as train_main
from gateway.routing.state import load_routing_state

ROOT = Path(__file__).resolve().parents[3]
DEV = ROOT.parent / "shared" / "routing-dev" / "mmlu_dev.jsonl"
POLICY = """\
version: 1
tiers:
  edge: {{context_window: 2048, nodes: [{{url: "http://127.0.0.1:1", model: edge-m}}]}}
  cloud: {{context_window: 8192, nodes: [{{url: "http://127.0.0.1:2", model: cloud-m}}]}}
routing:
  cloud_above: {cloud_above}
  classifier: {{kind: learned, model: {model}}}
"""


def dev_subset() -> bytes:
    """Every 16th line of the dev set (482 lines, all 28 subjects), or, where shared/ is not
    beside the checkout, synthetic lines in the same format whose gain grows with length."""
    if DEV.exists():
        lines = DEV.read_bytes().split(b"\n")
        return b"\n".join(lines[::16]) + b"\n"
    out = []
    for i in range(480):
        words = 5 + (i * 37) % 120
        prompt = f"Question {i}: " + " ".join(f"w{(i + k) % 50}" for k in range(words))
        hard = (i * 7919) % 100 < words * 0.6
        row = {
            "prompt": prompt,
            "domain": f"d{i % 8}",
            "edge_correct": not hard,
            "cloud_correct": hard or i % 5 != 0,
        }
        out.append(json.dumps(row))
    return ("\n".join(out) + "\n").encode()


def train(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "train", *map(str, args)],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def train_in(folder: Path) -> subprocess.CompletedProcess[str]:
    """Training on ``folder``/data.jsonl, with paths relative to it (the report records the
    command, so two runs compare byte for byte only with the same arguments)."""
    return train(
        "--data",
        "data.jsonl",
        "--out",
        "w.json",
        "--report",
        "report",
        "--target-edge-share",
        "0.6",
        cwd=folder,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One training run: data.jsonl, w.json and report/ in a folder."""
    folder = tmp_path_factory.mktemp("trained")
    (folder / "data.jsonl").write_bytes(dev_subset())
    done = train_in(folder)
    assert done.returncode == 0, done.stderr
    assert "held-out APGR" in done.stdout
    return folder


def test_train_round_trips_through_a_policy_and_classify(trained: Path) -> None:
    report = json.loads((trained / "report" / "report.json").read_text(encoding="utf-8"))
    threshold = report["operating_point"]["cloud_above"]
    policy = trained / "policy.yaml"
    # A relative model path resolves against the policy file's folder, not the cwd.
    policy.write_text(POLICY.format(cloud_above=threshold, model="w.json"), encoding="utf-8")
    state = load_routing_state(policy)
    assert state.classifier.name == f"learned:{report['version']}"

    decisions = [
        json.loads(line)
        for line in (trained / "report" / "decisions.jsonl").read_text().splitlines()
    ]
    assert len(decisions) == report["held_out"]["lines"] > 50
    data = (trained / "data.jsonl").read_bytes().split(b"\n")
    requests = b"".join(
        json.dumps(
            {
                "id": d["line"],
                "messages": [
                    {"role": "user", "content": json.loads(data[d["line"] - 1])["prompt"]}
                ],
            }
        ).encode()
        + b"\n"
        for d in decisions
    )
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "classify", "--policy", str(policy)],
        cwd=ROOT,
        input=requests,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = {r["id"]: r for r in map(json.loads, done.stdout.decode().splitlines())}
    for d in decisions:
        assert (got[d["line"]]["tier"], got[d["line"]]["score"]) == (d["tier"], d["score"]), d
    tiers = [d["tier"] for d in decisions]
    assert {"edge", "cloud"} == set(tiers)
    edge_share = tiers.count("edge") / len(tiers)
    assert edge_share == pytest.approx(report["operating_point"]["edge_share"], abs=1e-4)


def test_the_report_compares_against_length_and_random(trained: Path) -> None:
    report = json.loads((trained / "report" / "report.json").read_text(encoding="utf-8"))
    routers = report["held_out"]["routers"]
    assert set(routers) == {"trained", "prompt length", "random (mean of 50 seeds)"}
    for figures in routers.values():
        assert set(figures) == {"apgr", "cpt50", "cpt80"}
        assert 0.0 < figures["cpt50"] < figures["cpt80"] <= 100.0
    assert 0.4 < routers["random (mean of 50 seeds)"]["apgr"] < 0.6
    point = report["operating_point"]
    assert point["target_edge_share"] == 0.6
    assert 0.0 <= point["cloud_above"] <= 1.0
    assert abs(point["edge_share"] - 0.6) < 0.05
    assert report["selection"]["candidates"][0]["label"] == "length"
    plot = (trained / "report" / "accuracy_vs_cloud_share.png").read_bytes()
    assert plot.startswith(b"\x89PNG\r\n\x1a\n") and len(plot) > 10_000
    markdown = (trained / "report" / "report.md").read_text(encoding="utf-8")
    assert f"cloud_above: {point['cloud_above']}" in markdown
    assert "| prompt length |" in markdown
    weights = json.loads((trained / "w.json").read_text(encoding="utf-8"))
    assert weights["format"] == "gateway.complexity-model/1"
    assert weights["training"]["data_sha256"] == report["data_sha256"]


def test_the_same_input_gives_the_same_bytes(trained: Path, tmp_path: Path) -> None:
    (tmp_path / "data.jsonl").write_bytes((trained / "data.jsonl").read_bytes())
    done = train_in(tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "w.json").read_bytes() == (trained / "w.json").read_bytes()
    for name in ("report.json", "decisions.jsonl", "accuracy_vs_cloud_share.png"):
        ours = (tmp_path / "report" / name).read_bytes()
        assert ours == (trained / "report" / name).read_bytes(), name


def test_operator_lines_with_messages_train_without_domains(trained: Path, tmp_path: Path) -> None:
    """The shadow-export format: messages, edge_ok, cloud_ok, and a max_tokens."""
    rows = [json.loads(line) for line in (trained / "data.jsonl").read_text().splitlines()]
    data = tmp_path / "ops.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": r["prompt"]},
                    ],
                    "edge_ok": r["edge_correct"],
                    "cloud_ok": r["cloud_correct"],
                    **({"max_tokens": 256} if i % 3 == 0 else {}),
                }
            )
            + "\n"
            for i, r in enumerate(rows)
        ),
        encoding="utf-8",
    )
    done = train("--data", data, "--out", tmp_path / "w.json")
    assert done.returncode == 0, done.stderr
    weights = json.loads((tmp_path / "w.json").read_text(encoding="utf-8"))
    assert weights["training"]["selection"]["by"] == "request hash"
    assert weights["training"]["selection"]["folds"] == 5
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(cloud_above=0.5, model="w.json"), encoding="utf-8")
    assert load_routing_state(policy).classifier.name.startswith("learned:trained-")


def _lines(n: int, make: Callable[[int], object]) -> str:
    return "".join(json.dumps(make(i)) + "\n" for i in range(n))


def _row(i: int) -> dict[str, object]:
    return {
        "messages": [{"role": "user", "content": f"question {i}"}],
        "edge_ok": i % 2 == 0,
        "cloud_ok": i % 3 != 0,
    }


GOOD = _lines(60, _row)
BAD_INPUTS: list[tuple[str, bytes, str]] = [
    ("malformed", (_lines(2, _row) + '{"messages": [\n' + GOOD).encode(), ":3: malformed JSON"),
    (
        "missing label",
        (
            _lines(1, _row)
            + json.dumps({"messages": [{"role": "user", "content": "x"}], "cloud_ok": True})
            + "\n"
            + GOOD
        ).encode(),
        ':2: missing field "edge_ok"',
    ),
    (
        "missing messages",
        (GOOD + json.dumps({"edge_ok": True, "cloud_ok": False}) + "\n").encode(),
        ':61: missing field "messages" (or "prompt")',
    ),
    (
        "label not a boolean",
        (json.dumps({**_row(0), "cloud_ok": "yes"}) + "\n" + GOOD).encode(),
        ":1: cloud_ok must be true or false",
    ),
    (
        "bad messages",
        (GOOD + json.dumps({**_row(0), "messages": [{"role": "robot"}]}) + "\n").encode(),
        ":61: messages[0].role must be one of",
    ),
    (
        "role not a string",
        (GOOD + json.dumps({**_row(0), "messages": [{"role": ["user"]}]}) + "\n").encode(),
        ":61: messages[0].role must be one of",
    ),
    ("empty", b"", "no labelled lines: the file is empty"),
    ("only blank lines", b"\n  \n\n", "no labelled lines: the file is empty"),
    (
        "one label",
        _lines(80, lambda i: {**_row(i), "edge_ok": True, "cloud_ok": True}).encode(),
        "every line (1-80) has the same label (edge_ok=true, cloud_ok=true",
    ),
    ("too few", _lines(12, _row).encode(), "too few lines to fit: 12 labelled lines"),
    (
        "one request",
        _lines(60, lambda i: {**_row(i), "messages": [{"role": "user", "content": "hi"}]}).encode(),
        "too few lines to fit: too few different requests to hold out 20 %",
    ),
    ("not utf-8", GOOD.encode() + b'{"prompt": "caf\xe9"}\n', ":61: not UTF-8 text"),
    (
        "domain on some lines",
        (json.dumps({**_row(0), "domain": "a"}) + "\n" + GOOD).encode(),
        ":2: domain is missing",
    ),
]


@pytest.mark.parametrize(("case", "content", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_an_error_naming_the_line_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, content: bytes, message: str
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_bytes(content)
    out, report = tmp_path / "out" / "w.json", tmp_path / "report"
    code = train_main(["--data", str(data), "--out", str(out), "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"error: {data}"), err
    assert message in err, err
    assert not out.exists() and not out.parent.exists() and not report.exists()


def test_a_missing_file_and_a_directory_as_out_are_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.jsonl"
    assert train_main(["--data", str(missing), "--out", str(tmp_path / "w.json")]) == 2
    assert f"error: {missing}: cannot read" in capsys.readouterr().err
    (tmp_path / "data.jsonl").write_text(GOOD, encoding="utf-8")
    assert train_main(["--data", str(tmp_path / "data.jsonl"), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]


def test_a_report_that_cannot_be_written_leaves_no_weights_either(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data.jsonl").write_text(GOOD, encoding="utf-8")
    (tmp_path / "file.txt").write_text("in the way", encoding="utf-8")
    out, report = tmp_path / "w.json", tmp_path / "file.txt" / "report"
    code = train_main(
        ["--data", str(tmp_path / "data.jsonl"), "--out", str(out), "--report", str(report)]
    )
    assert code == 2
    assert "cannot write" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "file.txt"]


def test_train_is_registered_with_the_other_commands() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "train" in done.stdout
    usage = train("--help")
    assert usage.returncode == 0 and "--target-edge-share" in usage.stdout


def test_subset_is_stable() -> None:
    # The round trip's input is fixed: a different subset would be a different test.
    digest = hashlib.sha256(dev_subset()).hexdigest()
    assert len(digest) == 64 and dev_subset() == dev_subset()
