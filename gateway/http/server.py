"""The HTTP server around the app: aiohttp's own error answers in the OpenAI error format.

aiohttp answers some requests itself, before any middleware can: a request line or
header it cannot parse, a line over its size limit or too many headers, broken chunked
framing (all 400), and an exception that escapes the middleware chain (500, or 504 for
a ``TimeoutError``). It writes those in ``text/plain`` from one method,
``RequestHandler.handle_error``; :class:`GatewayRequestHandler` overrides it to answer
like every other gateway error (``{"error": {"message", "type", "param", "code"}}``,
with an ``x-request-id``), and logs a malformed request at DEBUG, not as a traceback.
:class:`GatewayRunner` is ``web.AppRunner`` with a protocol factory that makes these
handlers: ``python -m gateway serve`` and the tests' gateways run on it.

aiohttp offers no public hook for the handler class, so two of its internals are
overridden here, ``AppRunner._make_server`` and ``Server.__call__`` (the protocol factory,
whose body this repeats); ``tests/gateway/test_protocol_errors.py`` sends malformed
requests over raw sockets and fails if an aiohttp upgrade changes them.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.http.middlewares import status_error_response

log = logging.getLogger("gateway.http")

_MAX_MESSAGE_CHARS = 300


class GatewayRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol, with its error answers as OpenAI-style JSON."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The answer to a request aiohttp could not hand to the app (the connection is
        closed after it, as aiohttp does)."""
        if status >= 500:
            # An exception escaped the middlewares: a bug, worth its traceback.
            log.error("error handling a request from %s", request.remote, exc_info=exc)
            message = "Internal gateway error." if status == 500 else "Gateway timeout."
        else:
            # Malformed input: the client's problem, seen often on a public port.
            log.debug("malformed request from %s: %s", request.remote, message or exc)
            message = (message or str(exc or "") or "Bad request.")[:_MAX_MESSAGE_CHARS]
        if request.writer.output_size > 0:
            # As aiohttp: part of a response went out already, so no other can follow.
            raise ConnectionError("A response was partly sent; no error answer can follow.")
        response = status_error_response(status, message, uuid.uuid4().hex)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's error log, less one case: a body the client broke (bad gzip, bad
        chunked framing) raises again when aiohttp drains it after the 400 went out, and is
        no server error."""
        if isinstance(kw.get("exc_info"), web.RequestPayloadError):
            log.debug("dropped the rest of a malformed request body: %s", kw["exc_info"])
            return
        super().log_exception(*args, **kw)


class _GatewayServer(web.Server):
    def __call__(self) -> RequestHandler:
        # aiohttp's own __call__, with the handler class replaced.
        return GatewayRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer protocol errors as OpenAI-style JSON."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # starts the app, as AppRunner does
        return _GatewayServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            **server._kwargs,
        )


__all__ = ["GatewayRequestHandler", "GatewayRunner"]
