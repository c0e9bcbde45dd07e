"""Wire types of the OpenAI chat-completions format, shared by the gateway and the nodes.

Only the fields the gateway or a node reads or writes are spelled out; every other field
a client sends passes through untouched (the TypedDicts are ``total=False``). ``Tier``
names the two tiers: the gateway routes between them and each node answers to its
tier's name as a model alias.
"""

from __future__ import annotations

from typing import Literal, TypedDict

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
ROLES: frozenset[str] = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

Tier = Literal["edge", "cloud"]
TIERS: tuple[Tier, Tier] = ("edge", "cloud")


class ContentPart(TypedDict, total=False):
    type: str
    text: str


class ChatMessage(TypedDict, total=False):
    role: Role
    content: str | list[ContentPart] | None
    name: str
    tool_calls: list[dict[str, object]]
    tool_call_id: str


class StreamOptions(TypedDict, total=False):
    include_usage: bool


class ChatCompletionRequest(TypedDict, total=False):
    model: str
    messages: list[ChatMessage]
    stream: bool
    stream_options: StreamOptions
    max_tokens: int | None
    max_completion_tokens: int | None
    temperature: float
    top_p: float
    n: int
    stop: str | list[str] | None
    seed: int
    user: str


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChoiceMessage(TypedDict, total=False):
    role: str
    content: str | None
    refusal: str | None
    annotations: list[dict[str, object]]


class Choice(TypedDict, total=False):
    index: int
    message: ChoiceMessage
    logprobs: dict[str, object] | None
    finish_reason: str | None


class ChatCompletion(TypedDict, total=False):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ChunkDelta(TypedDict, total=False):
    role: str
    content: str | None


class ChunkChoice(TypedDict, total=False):
    index: int
    delta: ChunkDelta
    finish_reason: str | None


class ChatCompletionChunk(TypedDict, total=False):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None


class ModelCard(TypedDict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(TypedDict):
    object: Literal["list"]
    data: list[ModelCard]


class ErrorDetail(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(TypedDict):
    error: ErrorDetail


class ErrorEvent(TypedDict):
    """An in-stream error: sent as an SSE ``data:`` event once the status can't change."""

    error: ErrorDetail


def error_body(message: str, *, type: str, code: str | None, param: str | None = None) -> ErrorBody:
    """Build an OpenAI-style error body."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def message_text(message: ChatMessage) -> str:
    """The text of a message: plain content, or the text parts of a multi-part content."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


__all__ = [
    "ROLES",
    "TIERS",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "Choice",
    "ChoiceMessage",
    "ChunkChoice",
    "ChunkDelta",
    "ContentPart",
    "ErrorBody",
    "ErrorDetail",
    "ErrorEvent",
    "ModelCard",
    "ModelList",
    "Role",
    "StreamOptions",
    "Tier",
    "Usage",
    "error_body",
    "message_text",
]
