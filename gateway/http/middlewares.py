"""Request ids, API keys, and the one place where exceptions become HTTP responses."""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.errors import GatewayError, Unauthorized
from gateway.protocol import error_body
from gateway.state import STATE

log = logging.getLogger("gateway.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
REQUEST_ID_HEADER = "x-request-id"
_PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def error_response(exc: GatewayError, request_id: str) -> web.Response:
    headers = {REQUEST_ID_HEADER: request_id, **exc.headers()}
    return web.Response(
        status=exc.status,
        body=json.dumps(exc.body()).encode(),
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def request_id_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id and turn every failure into an OpenAI-style error body."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = (
        incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else uuid.uuid4().hex
    )
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except GatewayError as exc:
        if exc.status >= 500:
            log.warning("request %s failed: %s", request_id, exc.message)
        return error_response(exc, request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        code = (
            "not_found"
            if exc.status == 404
            else "method_not_allowed"
            if exc.status == 405
            else None
        )
        return web.Response(
            status=exc.status,
            body=json.dumps(error_body(exc.reason, type=kind, code=code)).encode(),
            content_type="application/json",
            headers={REQUEST_ID_HEADER: request_id},
        )
    except Exception:
        # The outermost boundary: log with the traceback, answer without it.
        log.exception("request %s: unexpected error", request_id)
        return web.Response(
            status=500,
            body=json.dumps(
                error_body("Internal gateway error.", type="server_error", code="internal_error")
            ).encode(),
            content_type="application/json",
            headers={REQUEST_ID_HEADER: request_id},
        )
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


@web.middleware
async def api_key_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """When GATEWAY_API_KEYS is set, require one of them as a Bearer token."""
    keys = request.app[STATE].settings.api_keys
    if keys and request.path not in _PUBLIC_PATHS:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not any(
            hmac.compare_digest(token.strip().encode(), key.encode()) for key in keys
        ):
            raise Unauthorized("Missing or invalid API key; send Authorization: Bearer <key>.")
    return await handler(request)
