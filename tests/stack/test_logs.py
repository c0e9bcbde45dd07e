"""Service logs: appended across starts with a separator line each, rotated by size."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from scripts.stack import logs
from scripts.stack.processes import spawn


def _write(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (directory / name).write_text(text)


def _read(directory: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(directory.iterdir())}


@pytest.mark.parametrize(
    ("before", "rotated", "after"),
    [
        # Below the limit (or no log yet): nothing moves.
        ({"edge.log": "abc"}, False, {"edge.log": "abc"}),
        ({}, False, {}),
        # At the limit: the log becomes .1 and the next start writes a new one.
        ({"edge.log": "abcdefghij"}, True, {"edge.log.1": "abcdefghij"}),
        (
            {"edge.log": "abcdefghij", "edge.log.1": "old1", "edge.log.2": "old2"},
            True,
            {"edge.log.1": "abcdefghij", "edge.log.2": "old1", "edge.log.3": "old2"},
        ),
        # keep=3: the oldest file is dropped.
        (
            {"edge.log": "abcdefghij", "edge.log.1": "a", "edge.log.2": "b", "edge.log.3": "c"},
            True,
            {"edge.log.1": "abcdefghij", "edge.log.2": "a", "edge.log.3": "b"},
        ),
        # Another service's log is not touched.
        (
            {"edge.log": "0123456789!", "gw.log": "g"},
            True,
            {"edge.log.1": "0123456789!", "gw.log": "g"},
        ),
    ],
)
def test_rotate(
    before: dict[str, str], rotated: bool, after: dict[str, str], tmp_path: Path
) -> None:
    _write(tmp_path, before)
    assert logs.rotate(tmp_path / "edge.log", max_bytes=10, keep=3) is rotated
    assert _read(tmp_path) == after


@pytest.mark.parametrize(
    ("text", "run"),
    [
        ("no separator yet\n", ["no separator yet"]),
        (
            "===== 2025-06-01 12:00:00 +0000 x started (pid 1) =====\nfirst\n\n"
            "===== 2025-06-01 12:05:00 +0000 x started (pid 2) =====\nsecond\nlast\n",
            ["second", "last"],
        ),
        ("===== 2025-06-01 12:00:00 +0000 x started (pid 1) =====\n", []),
    ],
)
def test_current_run_is_what_follows_the_last_separator(
    text: str, run: list[str], tmp_path: Path
) -> None:
    (tmp_path / "x.log").write_text(text)
    assert logs.current_run(tmp_path / "x.log") == run


def _run_once(name: str, log_path: Path, word: str) -> int:
    argv = [sys.executable, "-c", f"print({word!r})"]
    service = spawn(name, argv, log_path=log_path, cwd=log_path.parent, env={})
    service.process.wait(timeout=30)
    service.stop()
    return service.process.pid


def test_each_start_appends_after_a_separator_with_its_pid(tmp_path: Path) -> None:
    log_path = tmp_path / "edge.log"
    first = _run_once("edge node", log_path, "first run")
    second = _run_once("edge node", log_path, "second run")
    text = log_path.read_text()
    stamp = r"\d{4}-\d\d-\d\d [\d:]+ [+-]\d{4}"
    separators = re.findall(rf"^===== {stamp} edge node started \(pid (\d+)\) =====$", text, re.M)
    assert [int(pid) for pid in separators] == [first, second], text
    # The first run's output is still there, each run's output after its own separator.
    assert text.index("first run") < text.index(f"(pid {second})") < text.index("second run")
    assert logs.current_run(log_path) == ["second run"]


def test_a_start_rotates_a_full_log(tmp_path: Path) -> None:
    log_path = tmp_path / "edge.log"
    with log_path.open("wb") as log:
        log.write(b"the crash we want to keep\n")
        log.truncate(logs.LOG_MAX_BYTES)
    pid = _run_once("edge node", log_path, "after rotation")
    assert (tmp_path / "edge.log.1").read_bytes().startswith(b"the crash we want to keep\n")
    text = log_path.read_text()
    assert text.startswith("===== ") and f"(pid {pid}) =====\nafter rotation\n" in text
