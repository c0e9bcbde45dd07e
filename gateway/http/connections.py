"""Client connections: a deadline for each request's headers, an idle deadline, and a cap.

What aiohttp 3.14's server (``web_protocol.RequestHandler``) bounds by itself: a request
line and each header field of at most 8190 bytes and at most 128 headers
(``max_line_size``, ``max_field_size``, ``max_headers``; over them, a 400), 64 KiB read
ahead before it stops reading (``read_bufsize``), and ``keepalive_timeout``: a connection
waiting for its next request is closed that long after it opened or after the previous
response (3630 s by default). A request whose bytes trickle in (headers at 1 byte/s) is
cut by nothing sooner, a body by nothing at all, and connections are not counted: one
file descriptor each, until the process runs out. With :class:`ConnectionLimits`
(``GATEWAY_*`` variables, see gateway/settings.py):

- **header deadline** (``header_timeout_s``): a request's line and headers must be
  complete that long after the connection opened (its first request) or after the
  request's first byte (later ones). Past it the connection is closed, after a 408
  error body when the client had sent part of a request (a silent socket gets nothing).
- **idle** (``idle_timeout_s``): aiohttp's ``keepalive_timeout``. A request's first byte
  moves that deadline to the request's header deadline, so idle time never cuts a request
  that is arriving on time.
- **body deadline** (``body_timeout_s``): :func:`gateway.http.body.read_body` answers 408
  and the connection is closed; aiohttp drains what is left of the body for at most
  :data:`LINGER_S` first, so that the client can read the answer.
- **cap** (``max_connections``): the protocol factory counts open connections; one more
  is answered a 503 error body (``Retry-After: 1``) and closed at once, without reading
  it. Closing rather than not accepting: a connection left in the kernel's backlog would
  hang until a slot frees, and the client learns nothing. The count is taken when
  asyncio creates the protocol, before ``connection_made``, so a burst of accepts in one
  loop iteration cannot overshoot it.

aiohttp has no public hook for any of this: :class:`GuardedRequestHandler` reads two of
``RequestHandler``'s internals, ``_waiter`` (pending while aiohttp waits for a request's
headers) and ``_next_keepalive_close_time``; ``tests/gateway/test_connections.py`` drives
each deadline over raw sockets and fails if an aiohttp upgrade changes them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, Final, cast

from aiohttp import web

from gateway.http.server import GatewayRequestHandler, GatewayRunner
from gateway.settings import ConnectionLimits
from hybrid_common.protocol import error_body

log = logging.getLogger("gateway.http")

LINGER_S: Final = 2.0
"""After an answer sent before its request's body was read (a 408, a 413), aiohttp reads
and drops the rest of the body for at most this long before closing (its default: 10 s)."""
REFUSAL_LOG_INTERVAL_S: Final = 10.0
"""At most one warning per this many seconds while connections are being refused."""


def _raw_response(status: int, reason: str, body: object, *extra_headers: str) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response, for a connection without a request."""
    payload = json.dumps(body).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        f"x-request-id: {uuid.uuid4().hex}",
        *extra_headers,
        "Connection: close",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


def _too_many_connections() -> bytes:
    body = error_body(
        "The gateway has too many open connections; retry shortly.",
        type="server_error",
        code="too_many_connections",
    )
    return _raw_response(503, "Service Unavailable", body, "Retry-After: 1")


def _header_timeout(timeout_s: float) -> bytes:
    body = error_body(
        f"The request headers did not arrive within {timeout_s:g} s.",
        type="invalid_request_error",
        code="request_timeout",
    )
    return _raw_response(408, "Request Timeout", body)


class ConnectionGate:
    """Counts one server's open client connections and turns away those over the cap."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.open = 0
        self.refused = 0
        """Connections turned away since start-up."""
        self._refused_unlogged = 0
        self._logged_at = -REFUSAL_LOG_INTERVAL_S

    def try_admit(self) -> bool:
        """Take a slot; False (and counted) when all ``max_connections`` are taken."""
        if self.open < self.max_connections:
            self.open += 1
            return True
        self.refused += 1
        self._refused_unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= REFUSAL_LOG_INTERVAL_S:
            log.warning(
                "connection cap reached: %d open, %d refused since the last warning "
                "(GATEWAY_MAX_CONNECTIONS=%d)",
                self.open,
                self._refused_unlogged,
                self.max_connections,
            )
            self._logged_at = now
            self._refused_unlogged = 0
        return False

    def release(self) -> None:
        self.open -= 1


class GuardedRequestHandler(GatewayRequestHandler):
    """aiohttp's per-connection protocol with the header deadline and the connection cap."""

    __slots__ = ("_admitted", "_gate", "_header_bytes", "_header_timeout_s", "_header_timer")

    def __init__(
        self, manager: web.Server, *, gate: ConnectionGate, header_timeout_s: float, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._gate = gate
        self._admitted = gate.try_admit()  # now, before connection_made: see the module doc
        self._header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = False
        """Whether part of the request being waited for has arrived."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._admitted:
            # A stream transport, though not an asyncio.Transport subclass on uvloop (its
            # transports only behave as one): no isinstance check.
            stream = cast(asyncio.Transport, transport)
            stream.write(_too_many_connections())
            stream.close()  # after the write is flushed; aiohttp never sees it
            return
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False  # the slot is released exactly once
        self._gate.release()
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        super().data_received(data)
        if self._awaiting_headers():
            if data:
                self._header_bytes = True
                if self._header_timer is None:  # the first byte of a request after a response
                    self._arm_header_deadline()
        else:  # the headers are complete: the request is aiohttp's (and the app's) now
            self._cancel_header_deadline()

    def _awaiting_headers(self) -> bool:
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _arm_header_deadline(self) -> None:
        deadline = self._loop.time() + self._header_timeout_s
        self._header_timer = self._loop.call_at(deadline, self._header_deadline_passed)
        # aiohttp's idle deadline, when earlier, is moved to this one: idle time must not
        # cut a request whose headers are still within their own deadline.
        self._next_keepalive_close_time = max(self._next_keepalive_close_time, deadline)

    def _cancel_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._header_bytes = False

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        if not self._awaiting_headers():
            return
        if self._header_bytes and self.transport is not None:
            self.transport.write(_header_timeout(self._header_timeout_s))
        log.debug("closing a connection: no complete request within %g s", self._header_timeout_s)
        self.force_close()  # flushes the answer, then closes


class _GuardedServer(web.Server):
    """aiohttp's protocol factory, making :class:`GuardedRequestHandler` s."""

    def __init__(
        self,
        handler: Any,
        *,
        gate: ConnectionGate,
        header_timeout_s: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.gate = gate
        self._header_timeout_s = header_timeout_s

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(
            self,
            loop=self._loop,
            gate=self.gate,
            header_timeout_s=self._header_timeout_s,
            **self._kwargs,
        )


class GuardedRunner(GatewayRunner):
    """:class:`GatewayRunner` whose connections keep to ``limits``; see the module doc."""

    __slots__ = ("gate", "limits")

    def __init__(self, app: web.Application, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(
            app, keepalive_timeout=limits.idle_timeout_s, lingering_time=LINGER_S, **kwargs
        )
        self.limits = limits
        self.gate = ConnectionGate(limits.max_connections)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the app started, JSON protocol errors
        return _GuardedServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            gate=self.gate,
            header_timeout_s=self.limits.header_timeout_s,
            **server._kwargs,
        )


__all__ = ["LINGER_S", "ConnectionGate", "GuardedRequestHandler", "GuardedRunner"]
