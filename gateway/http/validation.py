"""Schema checks on a chat request body. Errors name the param. No aiohttp: the
``classify`` command validates its input lines with the same code.

Beyond the fields the gateway reads, the whole body is checked once for what would break
the gateway further on: text that cannot be encoded as UTF-8 (a lone surrogate, see
:mod:`gateway.text`), numbers that are not finite, and nesting deeper than
:data:`MAX_DEPTH`. The integers the gateway reads are bounded (:data:`MAX_TOKENS_LIMIT`,
:data:`MAX_CHOICES`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Final, cast

import orjson

from gateway.errors import InvalidJSON, InvalidRequest
from gateway.text import has_lone_surrogate
from hybrid_common.messages import checked_messages
from hybrid_common.protocol import ChatCompletionRequest

MAX_DEPTH: Final = 64
"""Deepest nesting of arrays and objects in a body (the body object itself is level 1)."""
MAX_TOKENS_LIMIT: Final = 2**31 - 1
"""Largest ``max_tokens`` / ``max_completion_tokens`` (a signed 32-bit integer)."""
MAX_CHOICES: Final = 128
"""Largest ``n`` (OpenAI's own limit)."""

_NUMBER_FIELDS = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
_INTEGER_FIELDS = {
    "max_tokens": MAX_TOKENS_LIMIT,
    "max_completion_tokens": MAX_TOKENS_LIMIT,
    "n": MAX_CHOICES,
}


def parse_chat_request(raw: bytes, *, default_model: str | None = None) -> ChatCompletionRequest:
    """Parse and check the fields the gateway relies on; other fields pass through untouched.

    ``model`` is required, as in OpenAI's API, unless ``default_model`` names the model a
    request without one gets (the policy's ``routing.default_model``, an explicit opt-in).
    """
    if not raw.strip():
        raise InvalidJSON("The request body is empty; expected a JSON object.")
    body: object
    checked = False
    if _LONG_NUMBER.search(raw) is None:
        # orjson refuses all that the value checks look for (text that UTF-8 cannot
        # encode, numbers that are not finite): what it parses needs only the depth
        # check, which a body with few brackets passes by counting them.
        try:
            body = orjson.loads(raw)
            checked = raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH
        except orjson.JSONDecodeError:
            body = _parse_leniently(raw)  # for the standard parser's error, or the checks
    else:
        body = _parse_leniently(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if not checked:
        _check_values(body)
    model = body.get("model")
    if model is None:
        if default_model is None:
            raise InvalidRequest(
                'model is required: name a served model, a tier ("edge" or "cloud"), or "auto" '
                "to let the gateway choose.",
                param="model",
            )
        model = default_model
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model must be a non-empty string.", param="model")
    body["model"] = model
    _check_messages(body.get("messages"))
    for key in ("stream",):
        if key in body and body[key] is not None and not isinstance(body[key], bool):
            raise InvalidRequest(f"{key} must be a boolean.", param=key)
    for key, most in _INTEGER_FIELDS.items():
        value = body.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most
        ):
            raise InvalidRequest(f"{key} must be an integer from 1 to {most}.", param=key)
    for key, (low, high) in _NUMBER_FIELDS.items():
        value = body.get(key)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise InvalidRequest(f"{key} must be a number between {low:g} and {high:g}.", param=key)
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidRequest("stream_options must be an object.", param="stream_options")
        usage = options.get("include_usage")
        if usage is not None and not isinstance(usage, bool):
            raise InvalidRequest(
                "stream_options.include_usage must be a boolean.",
                param="stream_options.include_usage",
            )
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("user must be a string.", param="user")
    return cast(ChatCompletionRequest, body)


_LONG_NUMBER = re.compile(rb"[0-9]{20}")
"""Twenty digits in a row: maybe an integer past 64 bits, which orjson would turn into a
float (the standard parser keeps it exact, as a body passed on must)."""


def _parse_leniently(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidJSON(f"The request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # far deeper than MAX_DEPTH: too deep to even parse
        raise InvalidRequest(
            f"The request body is nested too deeply: at most {MAX_DEPTH} levels are allowed"
            f"{_where_too_deep(raw)}."
        ) from exc


class _Unusable(Exception):
    """A value the gateway cannot carry; ``path`` is filled in while unwinding."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str | int] = []


def _check_values(body: dict[str, object]) -> None:
    """Every string and key encodable as UTF-8, every number finite, nesting at most
    :data:`MAX_DEPTH` deep; else :class:`InvalidRequest` naming the first bad value."""
    try:
        _check_value(body, 1)
    except _Unusable as bad:
        param = _param(bad.path[::-1])
        where = param or "The request body"
        raise InvalidRequest(f"{where} {bad.problem}", param=param) from None


def _check_value(value: object, depth: int) -> None:
    # Recursion is bounded by MAX_DEPTH; the happy path builds no paths (try is free).
    if isinstance(value, str):
        if has_lone_surrogate(value):
            raise _Unusable(
                "is not valid Unicode text: it holds a lone surrogate (U+D800 to U+DFFF), "
                "which cannot be encoded as UTF-8."
            )
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Unusable("must be a finite number.")
    elif isinstance(value, dict):
        if depth > MAX_DEPTH:
            raise _Unusable(f"is nested too deeply: at most {MAX_DEPTH} levels are allowed.")
        for key, item in value.items():
            if has_lone_surrogate(key):
                raise _Unusable(
                    "has a key that is not valid Unicode text: it holds a lone surrogate "
                    "(U+D800 to U+DFFF), which cannot be encoded as UTF-8."
                )
            try:
                _check_value(item, depth + 1)
            except _Unusable as bad:
                bad.path.append(key)
                raise
    elif isinstance(value, list):
        if depth > MAX_DEPTH:
            raise _Unusable(f"is nested too deeply: at most {MAX_DEPTH} levels are allowed.")
        for index, item in enumerate(value):
            try:
                _check_value(item, depth + 1)
            except _Unusable as bad:
                bad.path.append(index)
                raise


_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _where_too_deep(raw: bytes) -> str:
    """Where level ``MAX_DEPTH + 1`` opens in ``raw`` (``" (at byte N)"``), read from the
    bytes: a body too deep for the parser has no parsed value to name a param in."""
    depth = 0
    for token in _JSON_TOKEN.finditer(raw):
        bracket = token.group()
        if bracket in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                return f" (level {depth} opens at byte {token.start()})"
        elif bracket in (b"]", b"}"):
            depth -= 1
    return ""


def _param(path: list[str | int]) -> str | None:
    """``messages[0].content`` from ``["messages", 0, "content"]``; None for the body."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or None


def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _check_messages(messages: object) -> None:
    for where, message, role in checked_messages(messages, _invalid):
        content = message.get("content")
        if content is None:
            if role == "assistant" and message.get("tool_calls"):
                continue
            raise InvalidRequest(f"{where}.content is required.", param=f"{where}.content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise InvalidRequest(
                f"{where}.content must be a string or an array of content parts.",
                param=f"{where}.content",
            )
        for part_index, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InvalidRequest(
                    f"{where}.content[{part_index}] must be an object with a type.",
                    param=f"{where}.content[{part_index}]",
                )
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise InvalidRequest(
                    f"{where}.content[{part_index}].text must be a string.",
                    param=f"{where}.content[{part_index}].text",
                )
