"""The base of every error the gateway and the edge node answer with.

Each subclass names an HTTP status, a stable ``code`` and an OpenAI error ``type``, and
renders the OpenAI-style body (:func:`~hybrid_common.protocol.error_body`). The trees
themselves stay with their services: ``gateway.errors.GatewayError`` and
``edge_node.errors.EdgeError``.
"""

from __future__ import annotations

from typing import ClassVar

from hybrid_common.protocol import ErrorBody, error_body


class OpenAIError(Exception):
    """An HTTP status, a stable code and an OpenAI-style body."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    type: ClassVar[str] = "server_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> ErrorBody:
        """The JSON body sent to the client."""
        return error_body(self.message, type=self.type, code=self.code, param=self.param)

    def headers(self) -> dict[str, str]:
        """Extra response headers (``Retry-After`` on the 503s that carry one)."""
        return {}


class RequestError(OpenAIError):
    """The request itself is wrong (4xx): sending it again unchanged will not help."""

    status = 400
    code = "invalid_request"
    type = "invalid_request_error"


class ModelNotFoundError(RequestError):
    status = 404
    code = "model_not_found"


__all__ = ["ModelNotFoundError", "OpenAIError", "RequestError"]
