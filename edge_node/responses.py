"""Wire shapes the node sends: completions, stream chunks, usage, SSE framing."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import TypedDict

from hybrid_common.protocol import ChatCompletion, ChatCompletionChunk, ChunkDelta, ModelCard, Usage

from .generation import Finished

SSE_DONE = b"data: [DONE]\n\n"


class PromptTokensDetails(TypedDict):
    cached_tokens: int


class EdgeUsage(Usage, total=False):
    """OpenAI usage plus ``prompt_tokens_details.cached_tokens`` (from the prompt cache)."""

    prompt_tokens_details: PromptTokensDetails


class EdgeModelCard(ModelCard, total=False):
    """A model card plus vLLM's ``max_model_len`` so clients can see the context window,
    and the variant's state: ``loaded``, its GGUF's ``file_bytes`` and, while loaded, the
    ``memory_bytes`` of its weights and KV cache (:mod:`edge_node.registry`)."""

    max_model_len: int
    loaded: bool
    file_bytes: int
    memory_bytes: int


def usage_of(finished: Finished) -> EdgeUsage:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": finished.cached_tokens},
    }


def sse_event(payload: object) -> bytes:
    """One SSE ``data:`` event; compact JSON has no newlines, so one line is enough."""
    return (
        b"data: "
        + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        + b"\n\n"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionIdentity:
    """The id, timestamp and model name shared by every chunk of one completion."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def completion(self, text: str, finished: Finished) -> ChatCompletion:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    # refusal and logprobs are required (nullable) by OpenAI's schema.
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": finished.finish_reason,
                }
            ],
            "usage": usage_of(finished),
        }

    def chunk(
        self,
        *,
        role: str | None = None,
        text: str | None = None,
        finish_reason: str | None = None,
        with_usage_field: bool,
    ) -> ChatCompletionChunk:
        delta: ChunkDelta = {}
        if role is not None:
            delta["role"] = role
        if text is not None:
            delta["content"] = text
        chunk: ChatCompletionChunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        if with_usage_field:
            # Asked for usage, OpenAI sends "usage": null on every chunk but the last.
            chunk["usage"] = None
        return chunk

    def usage_chunk(self, finished: Finished) -> ChatCompletionChunk:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_of(finished),
        }
