"""Errors of the session API, in the gateway's tree (see gateway/errors.py)::

    GatewayError
    ├── ClientError
    │   ├── SessionNotFound (404 session_not_found)
    │   └── SessionsDisabled (404 sessions_disabled)
    └── RetryLater
        └── SessionStoreUnavailable (503 session_store_unavailable, with Retry-After)

Chat requests never raise these: they are served without history instead.
"""

from __future__ import annotations

from gateway.errors import ClientError, RetryLater


class SessionNotFound(ClientError):
    status = 404
    code = "session_not_found"


class SessionsDisabled(ClientError):
    status = 404
    code = "sessions_disabled"


class SessionStoreUnavailable(RetryLater):
    code = "session_store_unavailable"
