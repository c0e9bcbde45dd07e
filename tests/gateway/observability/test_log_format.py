"""JsonFormatter's fast paths print what the plain ones did: time, extras, configuration;
log_fields writes the line logging would, and leaves every other set-up to logging."""

from __future__ import annotations

import enum
import io
import json
import logging
import re
import time
from typing import Any

import pytest

from gateway.logs import JsonFormatter, TextFormatter, configure_logging, log_fields, request_id_var


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


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


FIELDS: dict[str, object] = {"status": 200, "tier": "edge", "fallback": ["edge-1:timeout"]}


def _json_logger(*, level: int = logging.INFO) -> tuple[logging.Logger, io.StringIO]:
    """A logger pytest does not know (it adds no handlers of its own) with one JSON
    stream handler: the lines log_fields writes without a LogRecord."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.Logger("gateway.test.access", level)
    logger.addHandler(handler)
    return logger, stream


def _no_record(monkeypatch: pytest.MonkeyPatch, logger: logging.Logger) -> None:
    def fail(*args: object, **kwargs: object) -> logging.LogRecord:
        raise AssertionError("a LogRecord was made")

    monkeypatch.setattr(logger, "makeRecord", fail)


def test_log_fields_writes_the_line_logging_would(monkeypatch: pytest.MonkeyPatch) -> None:
    logger, stream = _json_logger()
    token = request_id_var.set("rid-7")
    try:
        logger.log(logging.INFO, "GET %s %d", "/x", 200, extra=FIELDS)
        with monkeypatch.context() as patched:
            _no_record(patched, logger)  # the sole JSON handler: written from the parts
            log_fields(logger, logging.INFO, "GET %s %d", ("/x", 200), FIELDS)
    finally:
        request_id_var.reset(token)
    by_logging, direct = (json.loads(line) for line in stream.getvalue().splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(direct["ts"]))
    assert list(direct) == list(by_logging)  # the same keys in the same order
    assert {**direct, "ts": None} == {**by_logging, "ts": None}
    assert direct["message"] == "GET /x 200" and direct["request_id"] == "rid-7"
    assert direct["fallback"] == ["edge-1:timeout"] and direct["level"] == "INFO"


def test_any_other_handler_gets_the_record(monkeypatch: pytest.MonkeyPatch) -> None:
    logger, stream = _json_logger()
    parent = logging.Logger("gateway.test", logging.INFO)
    records = _Records()
    parent.addHandler(records)
    logger.parent = parent
    log_fields(logger, logging.INFO, "GET %s", ("/x",), FIELDS)
    (record,) = records.records
    assert record.getMessage() == "GET /x" and record.__dict__["tier"] == "edge"
    assert json.loads(stream.getvalue())["tier"] == "edge"  # and the JSON handler its line


def test_filters_levels_and_a_disabled_logger_are_obeyed() -> None:
    logger, stream = _json_logger()
    logger.addFilter(lambda record: record.__dict__["status"] != 200)
    log_fields(logger, logging.INFO, "dropped by the logger's filter", (), FIELDS)
    log_fields(logger, logging.INFO, "kept", (), {**FIELDS, "status": 500})
    quiet, quiet_stream = _json_logger(level=logging.WARNING)
    log_fields(quiet, logging.INFO, "below the logger's level", (), FIELDS)
    picky, picky_stream = _json_logger()
    picky.handlers[0].setLevel(logging.ERROR)
    log_fields(picky, logging.WARNING, "below the handler's level", (), FIELDS)
    off, off_stream = _json_logger()
    off.disabled = True
    log_fields(off, logging.INFO, "disabled", (), FIELDS)
    sieved, sieved_stream = _json_logger()
    sieved.handlers[0].addFilter(lambda record: False)
    log_fields(sieved, logging.INFO, "dropped by the handler's filter", (), FIELDS)
    assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["kept"]
    silent = (quiet_stream, picky_stream, off_stream, sieved_stream)
    assert [s.getvalue() for s in silent] == ["", "", "", ""]


def test_a_text_handler_or_a_record_factory_of_ones_own_get_a_record() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    logger = logging.Logger("gateway.test.access", logging.INFO)
    logger.addHandler(handler)
    log_fields(logger, logging.INFO, "GET %s", ("/x",), FIELDS)
    assert stream.getvalue().endswith("INFO gateway.test.access: GET /x\n")

    json_logger, json_stream = _json_logger()
    plain = logging.getLogRecordFactory()

    def tagged(*args: object, **kwargs: object) -> logging.LogRecord:
        record = plain(*args, **kwargs)
        record.__dict__["host"] = "gw-1"
        return record

    logging.setLogRecordFactory(tagged)
    try:
        log_fields(json_logger, logging.INFO, "GET %s", ("/x",), FIELDS)
    finally:
        logging.setLogRecordFactory(plain)
    assert json.loads(json_stream.getvalue())["host"] == "gw-1"


def test_a_failed_write_is_reported_as_logging_reports_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError("disk full")

    logger, _ = _json_logger()
    handler = logger.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(Broken())
    reported: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", reported.append)
    log_fields(logger, logging.INFO, "GET %s", ("/x",), FIELDS)  # does not raise
    (record,) = reported
    assert record.getMessage() == "GET /x"


def test_a_logger_or_handler_class_of_ones_own_gets_a_record() -> None:
    class Stamped(logging.Logger):
        def makeRecord(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
            record = super().makeRecord(*args, **kwargs)
            record.__dict__["host"] = "gw-1"
            return record

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    own = Stamped("gateway.test.access", logging.INFO)
    own.addHandler(handler)
    log_fields(own, logging.INFO, "GET %s", ("/x",), FIELDS)
    assert json.loads(stream.getvalue())["host"] == "gw-1"

    class Counting(logging.StreamHandler):  # type: ignore[type-arg]
        emitted = 0

        def emit(self, record: logging.LogRecord) -> None:
            Counting.emitted += 1
            super().emit(record)

    logger = logging.Logger("gateway.test.access", logging.INFO)
    counting = Counting(io.StringIO())
    counting.setFormatter(JsonFormatter())
    logger.addHandler(counting)
    log_fields(logger, logging.INFO, "GET %s", ("/x",), FIELDS)
    assert Counting.emitted == 1


def test_a_logger_that_does_not_propagate_keeps_the_line_to_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logger, stream = _json_logger()
    parent = logging.Logger("gateway.test", logging.INFO)
    records = _Records()
    parent.addHandler(records)
    logger.parent, logger.propagate = parent, False
    _no_record(monkeypatch, logger)  # still the sole handler its lines reach
    log_fields(logger, logging.INFO, "GET %s", ("/x",), FIELDS)
    assert records.records == []
    assert json.loads(stream.getvalue())["message"] == "GET /x"
