"""The admin API's guard: ``Authorization: Bearer $GATEWAY_ADMIN_KEY``."""

from __future__ import annotations

import hmac

from aiohttp import web

from gateway.errors import Forbidden, Unauthorized
from gateway.state import SETTINGS


def require_admin(request: web.Request) -> None:
    """Raise unless the request presents the admin key (compared in constant time)."""
    admin_key = request.app[SETTINGS].admin_key
    if admin_key is None:
        raise Forbidden("The admin API is disabled: set GATEWAY_ADMIN_KEY to enable it.")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    presented = token.strip().encode("utf-8", "surrogateescape")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented, admin_key.encode("utf-8", "surrogateescape")
    ):
        raise Unauthorized("The admin API needs Authorization: Bearer <GATEWAY_ADMIN_KEY>.")
