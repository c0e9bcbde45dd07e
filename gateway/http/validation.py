"""Schema checks on a chat request body. Errors name the param. No aiohttp: the
``classify`` command validates its input lines with the same code."""

from __future__ import annotations

import json
from typing import cast

from gateway.errors import InvalidJSON, InvalidRequest
from gateway.protocol import ROLES, ChatCompletionRequest

_NUMBER_FIELDS = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}


def parse_chat_request(raw: bytes) -> ChatCompletionRequest:
    """Parse and check the fields the gateway relies on; other fields pass through untouched."""
    if not raw.strip():
        raise InvalidJSON("The request body is empty; expected a JSON object.")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidJSON(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model", "auto")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model must be a non-empty string.", param="model")
    body["model"] = model
    _check_messages(body.get("messages"))
    for key in ("stream",):
        if key in body and body[key] is not None and not isinstance(body[key], bool):
            raise InvalidRequest(f"{key} must be a boolean.", param=key)
    for key in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise InvalidRequest(f"{key} must be a positive integer.", param=key)
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


def _check_messages(messages: object) -> None:
    if messages is None:
        raise InvalidRequest("messages is required.", param="messages")
    if not isinstance(messages, list):
        raise InvalidRequest("messages must be an array.", param="messages")
    if not messages:
        raise InvalidRequest("messages must contain at least one message.", param="messages")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where} must be an object.", param=where)
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(
                f"{where}.role must be one of {', '.join(sorted(ROLES))}; got {role!r}.",
                param=f"{where}.role",
            )
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
