"""Stored shadow records as lines to label, in the shape ``python -m gateway train`` reads.

Each record becomes one JSON line whose first keys are the training input,
``{"messages": [...], "edge_ok": null, "cloud_ok": null}``, followed by what a labeller
needs to set the two verdicts: both answers (``edge``, ``cloud``: text, model, node,
finish reason, usage, duration), the routing decision of the time (``route``), the request
id and when it was answered. Labelling replaces each ``null`` with ``true`` or ``false``
(is this answer good enough for the request?); ``train`` refuses a line whose verdicts are
not booleans, so nothing unlabelled is trained on by mistake.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import IO

from gateway.shadow.records import RECORD_VERSION
from gateway.shadow.store import StoredLine

ANSWER_KEYS = ("tier", "node", "model", "content", "finish_reason", "usage", "duration_s")
"""What each answer carries into a line to label."""


class BadRecord(ValueError):
    """A stored line that is not a shadow record this gateway wrote; names where it lies."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: not a shadow record: {problem}")
        self.where = where


@dataclass(slots=True)
class ExportCount:
    exported: int = 0
    bad: int = 0
    """Lines passed over (only with ``skip_bad``)."""


def label_line(stored: StoredLine) -> dict[str, object]:
    """The line to label for one stored record; raises :class:`BadRecord`."""
    try:
        record = json.loads(stored.data)
    except (ValueError, RecursionError) as exc:
        raise BadRecord(stored.where, f"malformed JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise BadRecord(stored.where, "not a JSON object")
    if record.get("version") != RECORD_VERSION:
        raise BadRecord(stored.where, f"version {record.get('version')!r}, not {RECORD_VERSION}")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRecord(stored.where, "messages missing or empty")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise BadRecord(stored.where, "a message without a role")
    answers = {side: _answer(stored.where, record, side) for side in ("edge", "cloud")}
    return {
        "messages": messages,
        "edge_ok": None,
        "cloud_ok": None,
        "edge": answers["edge"],
        "cloud": answers["cloud"],
        "route": record.get("route"),
        "id": record.get("id"),
        "answered_at": record.get("answered_at"),
        "shadowed_at": record.get("shadowed_at"),
        "max_tokens": record.get("max_tokens"),
    }


def _answer(where: str, record: Mapping[str, object], side: str) -> dict[str, object]:
    answer = record.get(side)
    if not isinstance(answer, dict) or not isinstance(answer.get("content"), str):
        raise BadRecord(where, f"{side} answer missing or without text")
    return {key: answer.get(key) for key in ANSWER_KEYS}


async def export(
    lines: AsyncIterator[StoredLine], out: IO[str], *, skip_bad: bool = False
) -> ExportCount:
    """Write one line to label per stored record, oldest first; raises :class:`BadRecord`
    at the first bad one unless ``skip_bad``."""
    count = ExportCount()
    async for stored in lines:
        try:
            line = label_line(stored)
        except BadRecord:
            if not skip_bad:
                raise
            count.bad += 1
            continue
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
        count.exported += 1
    return count


__all__ = ["ANSWER_KEYS", "BadRecord", "ExportCount", "export", "label_line"]
