"""What can go wrong on the way to a node and back, below HTTP status codes."""

from __future__ import annotations


class HttpError(Exception):
    """A call to a node failed in transport or framing (never for its status code)."""


class ConnectFailed(HttpError):
    """No connection could be opened (refused, unreachable, DNS, TLS handshake)."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class ConnectionLost(HttpError):
    """The connection closed before the response was whole."""


class MalformedResponse(HttpError):
    """The node's bytes are not an HTTP/1 response this client reads."""


class InvalidRequestHeader(HttpError):
    """A header name or value would break the request's framing (CR, LF or NUL in it)."""


__all__ = [
    "ConnectFailed",
    "ConnectionLost",
    "HttpError",
    "InvalidRequestHeader",
    "MalformedResponse",
]
