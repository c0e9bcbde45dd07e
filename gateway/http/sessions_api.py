"""GET and DELETE /v1/sessions/{session_id}: read or erase a conversation's history.

Behind the same API-key middleware as the chat endpoint. A session with no turns does
not exist (404 session_not_found); with Redis down both answer 503 with Retry-After.
"""

from __future__ import annotations

from aiohttp import web

from gateway.sessions.errors import SessionsDisabled
from gateway.sessions.keys import check_session_id
from gateway.sessions.service import SessionService
from gateway.state import STATE


def _service(request: web.Request) -> tuple[SessionService, str]:
    service = request.app[STATE].sessions
    session_id = check_session_id(request.match_info["session_id"], param="session_id")
    if service is None or not service.enabled:
        raise SessionsDisabled("Sessions are disabled on this gateway (REDIS_URL is not set).")
    return service, session_id


async def get_session(request: web.Request) -> web.Response:
    service, session_id = _service(request)
    return web.json_response(await service.view(session_id))


async def delete_session(request: web.Request) -> web.Response:
    service, session_id = _service(request)
    await service.erase(session_id)
    return web.Response(status=204)


# Any segment reaches the handler, so a malformed id gets a 400 naming it, not a bare 404.
_PATH = "/v1/sessions/{session_id:[^/]+}"


def add_session_routes(app: web.Application) -> None:
    app.router.add_get(_PATH, get_session)
    app.router.add_delete(_PATH, delete_session)
