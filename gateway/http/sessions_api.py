"""GET and DELETE /v1/sessions/{session_id}: read or erase a conversation's history.

Behind the same API-key middleware as the chat endpoint, and scoped to the caller: with
GATEWAY_API_KEYS set, the id names a session of the key the request presents, so another
key's session with the same id is neither shown nor deleted (404, as if it did not
exist). A session with no turns does not exist (404 session_not_found); with Redis down
both answer 503 with Retry-After.
"""

from __future__ import annotations

from aiohttp import web

from gateway.http.middlewares import CALLER
from gateway.sessions.errors import SessionsDisabled
from gateway.sessions.keys import SessionRef, check_session_id
from gateway.sessions.service import SessionService
from gateway.state import POLICIES, SESSIONS


def _service(request: web.Request) -> tuple[SessionService, SessionRef]:
    service = request.app[SESSIONS]
    session_id = check_session_id(request.match_info["session_id"], param="session_id")
    if not service.enabled:
        raise SessionsDisabled("Sessions are disabled on this gateway (REDIS_URL is not set).")
    return service, SessionRef(session_id, request.get(CALLER))


async def get_session(request: web.Request) -> web.Response:
    service, session = _service(request)
    return web.json_response(await service.view(session))


async def delete_session(request: web.Request) -> web.Response:
    service, session = _service(request)
    await service.erase(session, policy=request.app[POLICIES].current.policy)
    return web.Response(status=204)


# Any segment reaches the handler, so a malformed id gets a 400 naming it, not a bare 404.
_PATH = "/v1/sessions/{session_id:[^/]+}"


def add_session_routes(app: web.Application) -> None:
    app.router.add_get(_PATH, get_session)
    app.router.add_delete(_PATH, delete_session)
