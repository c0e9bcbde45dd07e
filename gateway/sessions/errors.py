"""Errors of the session API, in the gateway's tree (see gateway/errors.py)::

    GatewayError
    ├── ClientError
    │   ├── SessionNotFound (404 session_not_found)
    │   └── SessionsDisabled (404 sessions_disabled)
    └── SessionStoreUnavailable (503 session_store_unavailable, with Retry-After)

Chat requests never raise these: they are served without history instead.
"""

from __future__ import annotations

from gateway.errors import ClientError, GatewayError


class SessionNotFound(ClientError):
    status = 404
    code = "session_not_found"


class SessionsDisabled(ClientError):
    status = 404
    code = "sessions_disabled"


class SessionStoreUnavailable(GatewayError):
    status = 503
    code = "session_store_unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}
