"""Validation of chat-completion request bodies into an immutable ChatRequest.

Every check raises InvalidRequest (400) naming the offending ``param``, so no client
input can reach the model in a shape that makes llama.cpp or the template fail.
Fields that would change the answer and that the node does not implement (tools,
response_format, logprobs, logit_bias, n > 1, non-text content parts) are rejected, not
ignored: an answer that silently left them out would look like a faithful one. Fields
that do not change the answer (``user``, ``metadata``, ``parallel_tool_calls``, ...) are
ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hybrid_common.messages import checked_messages

from .errors import InvalidRequest, ModelNotFound

MAX_STOP_SEQUENCES = 4
DEFAULT_TEMPERATURE = 0.8  # llama.cpp server's default; OpenAI's 1.0 is too wild for tiny models
DEFAULT_TOP_P = 0.95


@dataclass(frozen=True, slots=True, kw_only=True)
class PromptMessage:
    """One message as the chat template sees it: a role and plain text."""

    role: str
    content: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Sampling:
    """Sampling parameters handed to llama.cpp."""

    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatRequest:
    """A validated chat-completion request."""

    messages: tuple[PromptMessage, ...]
    max_tokens: int | None
    stream: bool
    include_usage: bool
    stop: tuple[str, ...]
    sampling: Sampling
    ignore_eos: bool = False


def parse_json(raw: bytes) -> dict[str, object]:
    """Decode the body; anything but a JSON object is a 400."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def check_model(body: Mapping[str, object], accepted: frozenset[str], served: Sequence[str]) -> str:
    """The requested model; a missing one is a 400, one this node does not serve a 404."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter (a string).", param="model")
    if model not in accepted:
        raise ModelNotFound(model, served=served)
    return model


def parse_chat_request(body: Mapping[str, object]) -> ChatRequest:
    """Validate a decoded body (model already checked) into a ChatRequest."""
    stream = _optional_bool(body, "stream", default=False)
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise InvalidRequest("stream_options must be an object.", param="stream_options")
        include_usage = _optional_bool(
            stream_options, "include_usage", default=False, prefix="stream_options."
        )

    n = _optional_int(body, "n", minimum=1)
    if n not in (None, 1):
        raise InvalidRequest("This node generates one choice per request; n must be 1.", param="n")
    _reject_unimplemented(body)

    max_tokens = _optional_int(body, "max_completion_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = _optional_int(body, "max_tokens", minimum=1)

    return ChatRequest(
        messages=_messages(body.get("messages")),
        max_tokens=max_tokens,
        stream=stream,
        include_usage=include_usage and stream,
        stop=_stop(body.get("stop")),
        sampling=Sampling(
            temperature=_optional_float(body, "temperature", 0.0, 2.0, DEFAULT_TEMPERATURE),
            top_p=_optional_float(body, "top_p", 0.0, 1.0, DEFAULT_TOP_P),
            presence_penalty=_optional_float(body, "presence_penalty", -2.0, 2.0, 0.0),
            frequency_penalty=_optional_float(body, "frequency_penalty", -2.0, 2.0, 0.0),
            seed=_optional_int(body, "seed", minimum=0),
        ),
        ignore_eos=_optional_bool(body, "ignore_eos", default=False),
    )


def _reject_unimplemented(body: Mapping[str, object]) -> None:
    """A 400 naming the first field the node would otherwise have to ignore."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools not in (None, []) and choice != "none":
        raise InvalidRequest(
            'This node does not call tools: send tool_choice "none" (the tools are then not '
            "needed) or ask a node that supports tool calls.",
            param="tools",
        )
    if choice not in (None, "none") and tools in (None, []):
        raise InvalidRequest(
            "tool_choice needs tools, and this node calls none.", param="tool_choice"
        )
    if body.get("functions") not in (None, []) and body.get("function_call") != "none":
        raise InvalidRequest("This node does not call functions.", param="functions")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise InvalidRequest(
            'This node answers in plain text only; response_format must be {"type": "text"}.',
            param="response_format",
        )
    if body.get("logprobs") not in (None, False):
        raise InvalidRequest("This node does not return logprobs.", param="logprobs")
    if body.get("top_logprobs") not in (None, 0):
        raise InvalidRequest("This node does not return logprobs.", param="top_logprobs")
    if body.get("logit_bias") not in (None, {}):
        raise InvalidRequest("This node does not apply a logit_bias.", param="logit_bias")


def _messages(value: object) -> tuple[PromptMessage, ...]:
    out: list[PromptMessage] = []
    for param, message, role in checked_messages(value, _invalid):
        # The template knows "system"; OpenAI's newer "developer" role means the same.
        out.append(
            PromptMessage(
                role="system" if role == "developer" else role, content=_text(message, param)
            )
        )
    return tuple(out)


def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _text(message: Mapping[str, object], param: str) -> str:
    content = message.get("content")
    if content is None:
        if message.get("role") == "assistant":
            return ""  # an assistant turn that only called tools
        raise InvalidRequest(
            f"{param}.content must be a string or an array of text parts.", param=f"{param}.content"
        )
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part_index, part in enumerate(content):
            part_param = f"{param}.content[{part_index}]"
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidRequest(
                    f"{part_param}: this node accepts only text parts.", param=part_param
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidRequest(f"{part_param}.text must be a string.", param=part_param)
            texts.append(text)
        return "\n".join(texts)
    raise InvalidRequest(
        f"{param}.content must be a string or an array of text parts.", param=f"{param}.content"
    )


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if (
        not isinstance(items, list)
        or len(items) > MAX_STOP_SEQUENCES
        or not all(isinstance(item, str) and item for item in items)
    ):
        raise InvalidRequest(
            f"stop must be a non-empty string or an array of at most {MAX_STOP_SEQUENCES} of them.",
            param="stop",
        )
    return tuple(str(item) for item in items)


def _optional_bool(
    body: Mapping[str, object], key: str, *, default: bool, prefix: str = ""
) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequest(f"{prefix}{key} must be a boolean.", param=f"{prefix}{key}")
    return value


def _optional_int(body: Mapping[str, object], key: str, *, minimum: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    # bool is an int subclass; JSON true is not a token count.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidRequest(f"{key} must be an integer >= {minimum}.", param=key)
    return value


def _optional_float(
    body: Mapping[str, object], key: str, low: float, high: float, default: float
) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"{key} must be a number.", param=key)
    if not low <= value <= high:
        raise InvalidRequest(f"{key} must be between {low:g} and {high:g}.", param=key)
    return float(value)
