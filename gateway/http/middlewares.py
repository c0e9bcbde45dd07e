"""Request ids, traces and access logs, API keys, and the one place where exceptions
become HTTP responses."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from gateway.accounts.model import ApiKey
from gateway.errors import GatewayError, Unauthorized
from gateway.http.access import CHAT_ACCESS, access_fields
from gateway.http.bearer import bearer_token, matching_key
from gateway.logs import log_fields, request_id_var
from gateway.sessions.keys import owner_of_key
from gateway.state import KEYS, METRICS, SETTINGS, TRACING
from gateway.telemetry import server_span
from hybrid_common.protocol import error_body

log = logging.getLogger("gateway.http")
access_log = logging.getLogger("gateway.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
REQUEST_ID_HEADER = "x-request-id"
_PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def error_response(exc: GatewayError, request_id: str) -> web.Response:
    headers = {REQUEST_ID_HEADER: request_id, **exc.headers()}
    response = web.Response(
        status=exc.status,
        body=json.dumps(exc.body()).encode(),
        content_type="application/json",
        headers=headers,
    )
    if headers.get("Connection", "").lower() == "close":
        # aiohttp keeps a connection open unless told: a header alone would be a false promise.
        response.force_close()
    return response


_STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "request_too_large",
    414: "uri_too_long",
    431: "request_header_fields_too_large",
    500: "internal_error",
    503: "service_unavailable",
    504: "gateway_timeout",
}


def status_error_response(status: int, message: str, request_id: str) -> web.Response:
    """An OpenAI-style error body for a bare HTTP status: aiohttp's own answers (router
    404/405, protocol errors) that carry no gateway error."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.Response(
        status=status,
        # ensure_ascii (the default): whatever the message quotes, the body is plain ASCII.
        body=json.dumps(error_body(message, type=kind, code=_STATUS_CODES.get(status))).encode(),
        content_type="application/json",
        headers={REQUEST_ID_HEADER: request_id},
    )


def request_id_of(request: web.Request) -> str:
    """The client's ``x-request-id`` when it is usable, else a new one."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    if 0 < len(incoming) <= 128 and incoming.isprintable():
        return incoming
    # 128 random bits as 32 hex digits, like a uuid4's hex. Not a secret (a client may
    # send its own): the process's Mersenne Twister, seeded by the OS at start and again
    # in a forked child, where os.urandom would be a getrandom() system call per request.
    return f"{random.getrandbits(128):032x}"


@web.middleware
async def observe_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request id (and its log context), the request's server span continuing the
    caller's ``traceparent``, and one access log line. Outermost: it sees the final status.

    Probes (``/healthz``, ``/readyz``, ``/metrics``) get no span, and their access line is
    logged at DEBUG: a scraper every few seconds would drown the requests that matter.
    """
    request_id = request_id_of(request)
    request[REQUEST_ID] = request_id
    token = request_id_var.set(request_id)
    started = time.perf_counter()
    try:
        tracing = request.app[TRACING]
        probe = request.path in _PUBLIC_PATHS
        if probe or not tracing.enabled:
            return await _observed(request, handler, started, trace.INVALID_SPAN, probe)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else None
        attributes: dict[str, AttributeValue] = {
            "http.request.method": request.method,
            "url.path": logged_path(request),
            "url.scheme": request.scheme,
            "gateway.request_id": request_id,
        }
        if route is not None:
            attributes["http.route"] = route
        if request.remote:
            attributes["client.address"] = request.remote
        agent = request.headers.get("User-Agent")
        if agent:
            attributes["user_agent.original"] = agent
        name = f"{request.method} {route}" if route is not None else request.method
        with server_span(
            tracing, name=name, headers=request.headers, attributes=attributes
        ) as span:
            return await _observed(request, handler, started, span, probe)
    finally:
        request_id_var.reset(token)


async def _observed(
    request: web.Request, handler: Handler, started: float, span: Span, probe: bool
) -> web.StreamResponse:
    status: int | None = None  # stays None when the client went away (handler cancelled)
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # redirects, which the errors middleware lets through
        status = exc.status
        raise
    finally:
        metrics = request.app[METRICS]
        resource = request.match_info.route.resource
        metrics.http_responses.labels(
            resource.canonical if resource is not None else "unmatched",
            str(status) if status is not None else "disconnected",
        ).inc()
        if span.is_recording():
            if status is not None:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            else:
                span.set_attribute("gateway.client_disconnected", True)
        level = logging.DEBUG if probe else logging.INFO
        if access_log.isEnabledFor(level):
            duration_ms = round((time.perf_counter() - started) * 1000, 3)
            headers = response.headers if response is not None else {}
            tier, node = headers.get("x-gateway-tier"), headers.get("x-gateway-node")
            shown = status if status is not None else "disconnected"
            words, fields = access_fields(request.get(CHAT_ACCESS))
            path = logged_path(request)
            stored = request.get(API_KEY)  # named by its id: the key itself is never logged
            key_id = stored.id if stored is not None else None
            log_fields(
                access_log,
                level,
                "%s %s %s %.1f ms%s%s%s",
                (
                    request.method,
                    path,
                    shown,
                    duration_ms,
                    f" {tier}/{node}" if tier else "",
                    words,
                    f" key={key_id}" if key_id is not None else "",
                ),
                {
                    "method": request.method,
                    "path": path,
                    "status": status,
                    "duration_ms": duration_ms,
                    "tier": tier,
                    "node": node,
                    **fields,
                    "key_id": key_id,
                },
            )


def logged_path(request: web.Request) -> str:
    """The path for logs and spans: a route with variables as its template
    (``/v1/sessions/{session_id}``), since a session id may be a user's name or e-mail."""
    resource = request.match_info.route.resource
    if resource is not None and "{" in resource.canonical:
        return resource.canonical
    return request.path


def _error_on_span(code: str, status: int) -> None:
    """Name the failure on the request's span (a no-op one when tracing is off)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("gateway.error.code", code)
        if status >= 500:
            span.set_attribute("error.type", code)


@web.middleware
async def request_id_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id and turn every failure into an OpenAI-style error body."""
    request_id = request.get(REQUEST_ID) or request_id_of(request)
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except GatewayError as exc:
        if exc.status >= 500:
            log.warning("request %s failed: %s", request_id, exc.message)
        _error_on_span(exc.code, exc.status)
        return error_response(exc, request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = status_error_response(exc.status, exc.reason, request_id)
        if exc.status == 405:
            allow = exc.headers.get("Allow")
            if allow:
                response.headers["Allow"] = allow
        return response
    except Exception:
        # The outermost boundary: log with the traceback, answer without it.
        log.exception("request %s: unexpected error", request_id)
        _error_on_span("internal_error", 500)
        return status_error_response(500, "Internal gateway error.", request_id)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


CALLER: web.RequestKey[str] = web.RequestKey("caller", str)
"""Who sent an authenticated request: :func:`~gateway.sessions.keys.owner_of_key` of the
API key it presented (a hash, never the key). It owns the sessions the request names.
Unset when no key is required (one shared namespace)."""
API_KEY: web.RequestKey[ApiKey] = web.RequestKey("api_key", ApiKey)
"""The stored key (GATEWAY_KEY_STORE=redis) a request presented: its id, limits, budget
and tiers. Unset for a GATEWAY_API_KEYS key and when no key is required."""

_ADMIN_PREFIX = "/admin/"
_ADMIN_PATHS = frozenset({"/v1/usage"})
"""Guarded by the admin key (:func:`~gateway.http.admin_auth.require_admin`) in their
handlers, not by client keys: a client key opens none of them, nor is one needed."""


@web.middleware
async def api_key_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require a client key when GATEWAY_API_KEYS is set or GATEWAY_KEY_STORE=redis: one
    of GATEWAY_API_KEYS first (as before the key store existed), else a stored key that is
    not revoked (:data:`API_KEY`). The key names the request's :data:`CALLER`. Probes and
    the admin API (:data:`_ADMIN_PATHS`) are not guarded here."""
    settings = request.app[SETTINGS]
    keys = settings.api_keys
    if (keys or settings.key_store) and not _unguarded(request.path):
        token = bearer_token(request.headers.get("Authorization", ""))
        key = None if token is None else matching_key(token, keys)
        if key is not None:
            request[CALLER] = owner_of_key(key)
        else:
            stored = None
            if token is not None and settings.key_store:
                stored = await request.app[KEYS].authenticate(token)
            if token is None or stored is None:
                raise Unauthorized(
                    "Missing, invalid or revoked API key; send Authorization: Bearer <key>."
                )
            request[API_KEY] = stored
            request[CALLER] = owner_of_key(token)
            span = trace.get_current_span()
            if span.is_recording():
                span.set_attribute("gateway.key_id", stored.id)
    return await handler(request)


def _unguarded(path: str) -> bool:
    return path in _PUBLIC_PATHS or path in _ADMIN_PATHS or path.startswith(_ADMIN_PREFIX)
