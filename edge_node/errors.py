"""Errors of the edge node, each with an HTTP status, a stable code and an OpenAI body.

    EdgeError (500 internal_error, server_error)
    +-- InvalidRequest (400 invalid_request, invalid_request_error)
    |   +-- ContextLengthExceeded (400 context_length_exceeded, param "messages")
    +-- ModelNotFound (404 model_not_found, param "model")
    +-- RouteNotFound (404 not_found)
    +-- MethodNotAllowed (405 method_not_allowed)
    +-- PayloadTooLarge (413 payload_too_large)
    +-- Unavailable (503, server_error, carries Retry-After)
    |   +-- Overloaded (503 overloaded): the admission queue is full
    |   +-- ModelLoading (503 model_loading): the model is not loaded (yet)
    +-- GenerationFailed (500 generation_failed): llama.cpp failed mid-request

Client input only ever produces the 4xx classes; a 5xx means the node itself is busy
or broken, which is what the gateway's fail-over keys on. The root derives from
:class:`hybrid_common.errors.OpenAIError`, the base the gateway's errors share.
"""

from __future__ import annotations

from collections.abc import Sequence

from hybrid_common.errors import ModelNotFoundError, OpenAIError, RequestError


class EdgeError(OpenAIError):
    """Root of the edge node's errors; renders as an OpenAI-style error body."""


class InvalidRequest(EdgeError, RequestError):
    """The request is malformed or asks what this node cannot do (a 400)."""


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"

    def __init__(self, *, prompt_tokens: int, n_ctx: int, at_least: bool = False) -> None:
        counted = f"at least {prompt_tokens}" if at_least else str(prompt_tokens)
        super().__init__(
            f"This model's maximum context length is {n_ctx} tokens. However, your messages "
            f"resulted in {counted} tokens, which leaves no room for a completion. "
            "Please reduce the length of the messages.",
            param="messages",
        )
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx


class ModelNotFound(EdgeError, ModelNotFoundError):
    """The request names a model this node does not serve."""

    def __init__(self, model: str, *, served: Sequence[str]) -> None:
        # ``served``: the --model variant first, then the others (--variant).
        others = "".join(f", {name!r}" for name in served[1:])
        super().__init__(
            f"The model {model!r} does not exist on this edge node; it serves {served[0]!r} "
            f"(also reachable as 'edge'){others}.",
            param="model",
        )


class RouteNotFound(EdgeError):
    status = 404
    code = "not_found"
    type = "invalid_request_error"


class MethodNotAllowed(EdgeError):
    status = 405
    code = "method_not_allowed"
    type = "invalid_request_error"


class PayloadTooLarge(EdgeError):
    status = 413
    code = "payload_too_large"
    type = "invalid_request_error"


class Unavailable(EdgeError):
    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class Overloaded(Unavailable):
    code = "overloaded"


class ModelLoading(Unavailable):
    code = "model_loading"


class GenerationFailed(EdgeError):
    code = "generation_failed"


__all__ = [
    "ContextLengthExceeded",
    "EdgeError",
    "GenerationFailed",
    "InvalidRequest",
    "MethodNotAllowed",
    "ModelLoading",
    "ModelNotFound",
    "Overloaded",
    "PayloadTooLarge",
    "RouteNotFound",
    "Unavailable",
]
