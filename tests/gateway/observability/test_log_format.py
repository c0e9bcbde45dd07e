"""JsonFormatter's fast paths print what the plain ones did: time, extras, configuration."""

from __future__ import annotations

import enum
import json
import logging
import time

import pytest

from gateway.logs import JsonFormatter, configure_logging


def _record(created: float, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("gateway.x", logging.INFO, __file__, 1, "m", None, None)
    record.created = created
    record.msecs = int((created - int(created)) * 1000)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_timestamps_follow_the_clock_across_seconds() -> None:
    formatter = JsonFormatter()
    base = 1_700_000_000.0
    stamps = [
        json.loads(formatter.format(_record(t)))["ts"]
        for t in (base + 0.25, base + 0.75, base + 1.5, base + 0.5, base + 86400.001)
    ]
    expected = [
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"
        for t in (base + 0.25, base + 0.75, base + 1.5, base + 0.5, base + 86400.001)
    ]
    assert stamps == expected
    assert stamps[0] == "2023-11-14T22:13:20.250Z"


class Tier(enum.StrEnum):
    EDGE = "edge"


def test_extra_values_keep_their_json_types() -> None:
    entry = json.loads(
        JsonFormatter().format(
            _record(
                0.0,
                n=3,
                ok=True,
                ratio=0.5,
                none=None,
                tier=Tier.EDGE,
                items=("a", 1, None),
                nested=[{"a": 1}],
                other=object(),
                _private="hidden",
            )
        )
    )
    assert entry["n"] == 3 and entry["ok"] is True and entry["ratio"] == 0.5
    assert entry["none"] is None
    assert entry["tier"] == "edge"  # a str subclass is a string
    assert entry["items"] == ["a", 1, None]  # a list of scalars stays an array
    assert entry["nested"] == "[{'a': 1}]"  # anything else is text
    assert str(entry["other"]).startswith("<object object at")
    assert "_private" not in entry


def test_configured_logging_prints_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", "json")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("gateway.test").exception("failed", extra={"tier": "edge"})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    (line,) = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["message"] == "failed" and entry["level"] == "ERROR"
    assert entry["logger"] == "gateway.test" and entry["tier"] == "edge"
    assert "RuntimeError: boom" in entry["exception"]


def test_lines_are_compact_json_and_keep_what_orjson_refuses() -> None:
    formatter = JsonFormatter()
    line = formatter.format(_record(0.0, tier="edge", n=1))
    assert '"tier":"edge"' in line and "\n" not in line
    # A header decoded with surrogateescape, an integer past 64 bits: the standard library
    # writes the line instead, still one compact JSON object.
    odd = formatter.format(_record(0.0, path="/v1/\udcff", big=2**70))
    entry = json.loads(odd)
    assert entry["path"] == "/v1/\udcff" and entry["big"] == 2**70
    assert '"big":1180591620717411303424' in odd
