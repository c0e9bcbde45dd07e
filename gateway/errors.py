"""The gateway's error hierarchy; every error renders an OpenAI-style body.

Its root derives from :class:`hybrid_common.errors.OpenAIError`, the base it shares with
the edge node's errors.

::

    GatewayError (500 internal_error)
    ├── ClientError (400 invalid_request)            bad input: never retried
    │   ├── BodyTooLarge (413 request_too_large)
    │   ├── RequestTimeout (408 request_timeout)    the body came too slowly
    │   ├── InvalidJSON (400 invalid_json)
    │   ├── InvalidRequest (400 invalid_request, names the param)
    │   ├── Unauthorized (401 invalid_api_key)
    │   ├── Forbidden (403 permission_denied)
    │   ├── ModelNotFound (404 model_not_found)
    │   └── UpstreamClientError (the upstream's 4xx, passed on)
    ├── UpstreamError (502 upstream_error)          one attempt failed: may fail over
    │   ├── UpstreamConnectError (502 upstream_connect_error)
    │   │   └── UpstreamConnectionReset (502 upstream_connection_reset)  may retry the node
    │   ├── UpstreamTimeout (504 upstream_timeout)
    │   ├── UpstreamStatusError (502 upstream_status_<code>)
    │   ├── UpstreamOverloaded (503 upstream_overloaded, with the node's Retry-After)
    │   │   └── UpstreamRateLimited (429 upstream_rate_limited)
    │   ├── UpstreamProtocolError (502 upstream_protocol_error)
    │   └── UpstreamIncomplete (502 upstream_stream_truncated)   the answer broke off
    ├── RetryLater (503, with Retry-After)           shares init + header only; never caught
    │   ├── NoCapacity (503 no_healthy_upstream)
    │   ├── KeyStoreUnavailable (503 key_store_unavailable)
    │   ├── LimitsUnavailable (503 limits_unavailable)   Redis down, fail-closed
    │   ├── SessionStoreUnavailable (503 session_store_unavailable: gateway.sessions.errors)
    │   └── UsageStoreUnavailable (503 usage_store_unavailable: gateway.accounts.errors)
    ├── RateLimited (429 rate_limit_exceeded, type requests|tokens, Retry-After)  a key's RPM/TPM
    └── BudgetExceeded (429 budget_exceeded, type insufficient_quota, Retry-After)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

from hybrid_common.errors import ModelNotFoundError, OpenAIError, RequestError
from hybrid_common.protocol import ErrorBody, error_body

FailureKind = Literal["connect_error", "timeout", "status_5xx", "overloaded", "protocol_error"]


class GatewayError(OpenAIError):
    """Base class: an HTTP status, a stable code and an OpenAI-style body."""


class ClientError(GatewayError, RequestError):
    """The client's request is at fault (a 4xx)."""


class BodyTooLarge(ClientError):
    status = 413
    code = "request_too_large"


class RequestTimeout(ClientError):
    """The request body did not arrive within the deadline; the connection is closed."""

    status = 408
    code = "request_timeout"

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class InvalidJSON(ClientError):
    code = "invalid_json"


class InvalidRequest(ClientError):
    code = "invalid_request"


class Unauthorized(ClientError):
    status = 401
    code = "invalid_api_key"
    type = "authentication_error"


class Forbidden(ClientError):
    status = 403
    code = "permission_denied"
    type = "permission_error"


class ModelNotFound(ClientError, ModelNotFoundError):
    """No node serves the model the request names."""


class UpstreamClientError(ClientError):
    """An upstream rejected the request itself (4xx): retrying elsewhere won't help."""

    def __init__(self, status: int, body: ErrorBody) -> None:
        detail = body["error"]
        super().__init__(detail["message"], param=detail.get("param"))
        self.upstream_status = status
        self.upstream_body = body

    def body(self) -> ErrorBody:
        return self.upstream_body


class UpstreamError(GatewayError):
    """One attempt against one node failed in a way another node may not."""

    status = 502
    code = "upstream_error"
    kind: ClassVar[FailureKind] = "protocol_error"


class UpstreamConnectError(UpstreamError):
    code = "upstream_connect_error"
    kind = "connect_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    kind = "timeout"


class UpstreamStatusError(UpstreamError):
    code = "upstream_status_error"
    kind = "status_5xx"

    def __init__(self, message: str, *, upstream_status: int) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status


class UpstreamConnectionReset(UpstreamConnectError):
    """The connection broke after it was made (reset, closed early): the node may be fine."""

    code = "upstream_connection_reset"


class UpstreamOverloaded(UpstreamError):
    status = 503
    code = "upstream_overloaded"
    kind = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        """The node's own ``Retry-After``, in seconds, when it sent one."""


class UpstreamRateLimited(UpstreamOverloaded):
    """429: the node throttles; its Retry-After says when it will take the request."""

    status = 429
    code = "upstream_rate_limited"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"
    kind = "protocol_error"


class UpstreamIncomplete(UpstreamError):
    """An answer broke off after it began and could not be continued elsewhere."""

    code = "upstream_stream_truncated"
    kind = "protocol_error"


class RetryLater(GatewayError):
    """A 503 that tells the client when to come back (``Retry-After``, whole seconds).

    Only shares the constructor and the header: no code catches it, so each subclass is
    caught (or not) exactly as before it had this parent.
    """

    status = 503

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class NoCapacity(RetryLater):
    """No node could serve the request; the client should come back later."""

    code = "no_healthy_upstream"


class KeyStoreUnavailable(RetryLater):
    """The API keys in Redis could not be read (and no recent copy was at hand): the
    request is refused with 503, never let through unchecked."""

    code = "key_store_unavailable"


class RateLimited(GatewayError):
    """A key's requests or tokens per minute are used up, across every replica.

    OpenAI's shape: ``type`` says which limit (``requests`` or ``tokens``); the
    ``x-ratelimit-*`` headers and ``Retry-After`` say how the key stands and when to retry.
    """

    status = 429
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        limit: Literal["requests", "tokens"],
        retry_after_s: int,
        limit_headers: Mapping[str, str],
    ) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.limit_headers = limit_headers

    def body(self) -> ErrorBody:
        return error_body(self.message, type=self.limit, code=self.code)

    def headers(self) -> dict[str, str]:
        return {**self.limit_headers, "Retry-After": str(self.retry_after_s)}


class BudgetExceeded(GatewayError):
    """A key's budget for the period is spent (and reserved): refused until it resets.

    ``x-should-retry: false`` tells the OpenAI SDKs not to retry (they retry a 429 by
    default): nothing changes before ``Retry-After``, hours away.
    """

    status = 429
    code = "budget_exceeded"
    type = "insufficient_quota"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: int,
        limit_headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.limit_headers = dict(limit_headers or {})
        """The key's ``x-ratelimit-*`` headers, as on its other answers."""

    def headers(self) -> dict[str, str]:
        return {
            **self.limit_headers,
            "Retry-After": str(self.retry_after_s),
            "x-should-retry": "false",
        }


class LimitsUnavailable(RetryLater):
    """Redis could not check a key's limits or budget, and the policy fails closed
    (``limits.on_store_error: closed``)."""

    code = "limits_unavailable"


__all__ = [
    "BodyTooLarge",
    "BudgetExceeded",
    "ClientError",
    "FailureKind",
    "GatewayError",
    "InvalidJSON",
    "InvalidRequest",
    "KeyStoreUnavailable",
    "LimitsUnavailable",
    "ModelNotFound",
    "NoCapacity",
    "RateLimited",
    "RequestTimeout",
    "RetryLater",
    "Unauthorized",
    "UpstreamClientError",
    "UpstreamConnectError",
    "UpstreamConnectionReset",
    "UpstreamError",
    "UpstreamIncomplete",
    "UpstreamOverloaded",
    "UpstreamProtocolError",
    "UpstreamRateLimited",
    "UpstreamStatusError",
    "UpstreamTimeout",
]
