"""Structured JSON logs: one object per line, carrying the request id and trace id."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Final, Literal, TextIO, cast

import orjson

from gateway.telemetry import span_id_of_current_span, trace_id_of_current_span

LogFormat = Literal["json", "text"]
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("json", "text")

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gateway_request_id", default=None
)
"""Set by the request middleware; every log line of that request's task carries it."""

# Attributes every LogRecord has (plus those formatters add): the rest came in ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


_SCALARS = (str, int, float, bool)
_EXACT_SCALARS = frozenset(_SCALARS)
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "request_id", "trace_id", "span_id", ...extras}``.

    Written for the access log's rate (a line per request): the timestamp's text up to the
    second is kept from the previous line, the values of ``extra`` are checked by exact
    type first, and the line is encoded by orjson (compact, 10x faster than ``json``).
    """

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")
        """The last whole second formatted and its text; a tuple, so a thread that formats
        at the same time reads a consistent pair."""

    def format(self, record: logging.LogRecord) -> str:
        entry = self.entry(
            record.created,
            record.msecs,
            record.levelname,
            record.name,
            record.getMessage(),
            record.__dict__,
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _dumps(entry)

    def entry(
        self,
        created: float,
        msecs: float,
        level: str,
        logger: str,
        message: str,
        fields: Mapping[str, object],
    ) -> dict[str, object]:
        """The line's object, its exception aside; ``fields`` are a record's attributes (or
        :func:`log_fields`' fields): those that are not a LogRecord's own are the extras."""
        second = int(created)
        cached, prefix = self._second
        if second != cached:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, prefix)
        entry: dict[str, object] = {
            "ts": f"{prefix}.{int(msecs):03d}Z",
            "level": level,
            "logger": logger,
            "message": message,
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        trace_id = trace_id_of_current_span()
        if trace_id is not None:
            entry["trace_id"] = trace_id
            entry["span_id"] = span_id_of_current_span()
        for key, value in fields.items():
            if key not in _STANDARD and key[:1] != "_":
                # Nearly every value is a scalar: kept without a call (the access line has 16).
                exact = value is None or type(value) in _EXACT_SCALARS
                entry[key] = value if exact else _json_value(value)
        return entry


def _dumps(entry: dict[str, object]) -> str:
    try:
        return orjson.dumps(entry).decode()
    except TypeError:  # lone surrogates, integers past 64 bits: json writes them as is
        return _encode(entry)


def log_fields(
    logger: logging.Logger,
    level: int,
    msg: str,
    args: tuple[object, ...],
    fields: dict[str, object],
) -> None:
    """``logger.log(level, msg, *args, extra=fields)``: the same line wherever it goes.

    For the access line, a line per request. Where the line would reach exactly one
    handler, the JSON one :func:`configure_logging` installs, with no filter on the way
    (what ``serve`` runs with), that handler's stream gets the line straight from these
    parts: no LogRecord, no walk through the handlers, no look through the record's
    attributes. Timed inside the running gateway that is 16 us a line instead of 28, 3-5%
    of a non-streamed request's CPU in ``bench/overhead.py`` (docs/benchmarks.md).
    Anywhere else (another handler or a filter, a text format, a record factory, a logger
    class of one's own) the record is made and handled as ``logger.log`` does. ``fields``
    must not use a LogRecord attribute's name, which ``logger.log`` refuses.
    """
    if not logger.isEnabledFor(level):
        return
    handler = _sole_json_handler(logger, level)
    if handler is None:
        logger.log(level, msg, *args, extra=fields)
        return
    formatter = cast(JsonFormatter, handler.formatter)
    now = time.time()
    # created and msecs as LogRecord computes them
    entry = formatter.entry(
        now,
        int((now - int(now)) * 1000),
        logging.getLevelName(level),
        logger.name,
        msg % args if args else msg,
        fields,
    )
    handler.acquire()
    try:
        handler.stream.write(_dumps(entry) + handler.terminator)
        handler.flush()
    except RecursionError:  # as StreamHandler.emit
        raise
    except Exception:
        handler.handleError(logger.makeRecord(logger.name, level, "", 0, msg, args, None))
    finally:
        handler.release()


def _sole_json_handler(logger: logging.Logger, level: int) -> logging.StreamHandler[TextIO] | None:
    """The one handler a record of ``logger`` at ``level`` would reach, when that is a plain
    stream handler with a :class:`JsonFormatter` and nothing could filter or change the
    record on its way; else None. The walk is ``Logger.callHandlers``'."""
    if (
        logger.filters  # (a disabled logger's isEnabledFor() said no already)
        or type(logger) is not logging.Logger
        or logging.getLogRecordFactory() is not logging.LogRecord
    ):
        return None
    sole = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if sole is not None or type(handler) is not logging.StreamHandler:
                return None
            sole = handler
        current = current.parent if current.propagate else None
    if (
        sole is None
        or level < sole.level
        or sole.filters
        or type(sole.formatter) is not JsonFormatter
    ):
        return None
    return sole


def _json_value(value: object) -> object:
    """Scalars and lists of scalars as they are (a list stays a JSON array); else text.
    :meth:`JsonFormatter.entry` keeps None and exact scalars itself; subclasses come here."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, list | tuple) and all(
        item is None or isinstance(item, _SCALARS) for item in value
    ):
        return list(value)
    return str(value)


class TextFormatter(logging.Formatter):
    """Human-readable lines; the request id is appended when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = request_id_var.get()
        return f"{line} [request_id={request_id}]" if request_id is not None else line


def configure_logging(level: str, fmt: LogFormat) -> None:
    """Root logging to stderr, as JSON lines (``json``) or human-readable text (``text``).

    Records skip what neither format prints (the logging HOWTO's "Optimization"): the
    caller's file and line (a stack walk), thread and process names. About 2 us of the
    access line's 30 us, every request.
    """
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # documented switch; there is no public one
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "configure_logging",
    "log_fields",
    "request_id_var",
]
