"""Reading labelled traffic for ``train``: one JSON object per line, checked line by line.

Two shapes are accepted on any line:

- the operator's (and ``shadow export``'s): ``{"messages": [...], "edge_ok": bool,
  "cloud_ok": bool}``, optionally ``"max_tokens"``;
- the routing dev set's: ``{"prompt": str, "edge_correct": bool, "cloud_correct": bool}``.

Either may carry ``"domain"`` (a string: subject, app, tenant): when every line has one,
cross-validation holds out whole domains, so selection rewards what transfers between them.

Every problem is a :class:`TrainingDataError` naming the file and, where there is one, the
line: nothing is fitted from a file with a bad line. Pure Python (no numpy).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

from hybrid_common.protocol import ROLES, ChatMessage, Role

MIN_LINES: Final = 50
"""Fewer labelled lines cannot be split into a held-out slice and cross-validation folds
that each still hold both kinds of outcome."""
MAX_FILE_BYTES: Final = 1 << 30

_LABELS: Final = (("edge_ok", "cloud_ok"), ("edge_correct", "cloud_correct"))


class TrainingDataError(ValueError):
    """A labelled file that cannot be trained on; the message names the file and line."""

    def __init__(self, source: str, message: str, *, line: int | None = None) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")
        self.line = line


_Fail = Callable[[str], "TrainingDataError"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Example:
    line: int
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None
    edge_ok: bool
    cloud_ok: bool
    domain: str | None
    key: str
    """SHA-256 of the request (messages and max_tokens): equal requests share it, so a
    hash split keeps duplicates on one side."""

    @property
    def gain(self) -> int:
        return int(self.cloud_ok) - int(self.edge_ok)


def read_examples(path: Path, *, min_lines: int = MIN_LINES) -> list[Example]:
    """Every labelled line of ``path``; raises :class:`TrainingDataError` for any problem."""
    source = str(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise TrainingDataError(source, f"larger than {MAX_FILE_BYTES} bytes")
        raw = path.read_bytes()
    except OSError as exc:
        raise TrainingDataError(source, f"cannot read: {exc.strerror or exc}") from exc
    examples: list[Example] = []
    # split(b"\n"), not splitlines(): U+2028 inside a JSON string is not a line break.
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if line.strip():
            examples.append(_example(source, number, line))
    if not examples:
        raise TrainingDataError(source, "no labelled lines: the file is empty")
    gains = {e.gain for e in examples}
    if len(gains) == 1:
        first, last = examples[0].line, examples[-1].line
        e = examples[0]
        raise TrainingDataError(
            source,
            f"every line ({first}-{last}) has the same label (edge_ok={_js(e.edge_ok)}, "
            f"cloud_ok={_js(e.cloud_ok)}, or the same cloud_ok - edge_ok = {e.gain}): there is "
            "nothing to learn about which requests need the cloud",
        )
    if len(examples) < min_lines:
        raise TrainingDataError(
            source,
            f"too few lines to fit: {len(examples)} labelled lines, at least {min_lines} "
            f"needed (the last one is line {examples[-1].line})",
        )
    domains = {e.domain for e in examples}
    if None in domains and len(domains) > 1:
        missing = next(e.line for e in examples if e.domain is None)
        raise TrainingDataError(
            source, "domain is missing: give every line a domain, or none", line=missing
        )
    return examples


def _example(source: str, number: int, line: bytes) -> Example:
    def fail(message: str) -> TrainingDataError:
        return TrainingDataError(source, message, line=number)

    try:
        doc = json.loads(line)
    except UnicodeDecodeError as exc:
        raise fail("not UTF-8 text") from exc
    except (ValueError, RecursionError) as exc:
        raise fail(f"malformed JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise fail(f"must be a JSON object, got {type(doc).__name__}")
    edge_key, cloud_key = next(
        (pair for pair in _LABELS if pair[0] in doc or pair[1] in doc), _LABELS[0]
    )
    edge_ok = _boolean(doc, edge_key, fail)
    cloud_ok = _boolean(doc, cloud_key, fail)
    if "messages" in doc:
        messages = _messages(doc["messages"], fail)
    elif "prompt" in doc:
        prompt = doc["prompt"]
        if not isinstance(prompt, str):
            raise fail(f"prompt must be a string, got {type(prompt).__name__}")
        messages = (ChatMessage(role="user", content=prompt),)
    else:
        raise fail('missing field "messages" (or "prompt")')
    max_tokens = doc.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise fail(f"max_tokens must be a positive integer, got {max_tokens!r}")
    domain = doc.get("domain")
    if domain is not None and (not isinstance(domain, str) or not domain):
        raise fail(f"domain must be a non-empty string, got {domain!r}")
    canonical = json.dumps([messages, max_tokens], sort_keys=True, ensure_ascii=False)
    return Example(
        line=number,
        messages=messages,
        max_tokens=max_tokens,
        edge_ok=edge_ok,
        cloud_ok=cloud_ok,
        domain=domain,
        key=hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest(),
    )


def _boolean(doc: Mapping[str, object], key: str, fail: _Fail) -> bool:
    if key not in doc:
        raise fail(f'missing field "{key}" (true or false)')
    value = doc[key]
    if not isinstance(value, bool):
        raise fail(f"{key} must be true or false, got {json.dumps(value)[:40]}")
    return value


def _messages(value: object, fail: _Fail) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list) or not value:
        raise fail("messages must be a non-empty list of {role, content} objects")
    out: list[ChatMessage] = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise fail(f"messages[{i}] must be an object")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise fail(f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}")
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise fail(f"messages[{i}].content must be a string or a list of parts")
        out.append(ChatMessage(role=cast(Role, role), content=content))  # a member of ROLES
    return tuple(out)


def _js(value: bool) -> str:
    return "true" if value else "false"


__all__ = ["MIN_LINES", "Example", "TrainingDataError", "read_examples"]
