"""The admin API's guard: ``Authorization: Bearer $GATEWAY_ADMIN_KEY``; and the key store
the admin API and the usage report both need."""

from __future__ import annotations

from aiohttp import web

from gateway.accounts.directory import KeyDirectory
from gateway.accounts.errors import KeyStoreDisabled
from gateway.accounts.store import KeyStore
from gateway.errors import Forbidden, Unauthorized
from gateway.http.bearer import bearer_token, same_key
from gateway.state import KEYS, SETTINGS


def require_admin(request: web.Request) -> None:
    """Raise unless the request presents the admin key (compared in constant time)."""
    admin_key = request.app[SETTINGS].admin_key
    if admin_key is None:
        raise Forbidden("The admin API is disabled: set GATEWAY_ADMIN_KEY to enable it.")
    token = bearer_token(request.headers.get("Authorization", ""))
    if token is None or not same_key(token, admin_key):
        raise Unauthorized("The admin API needs Authorization: Bearer <GATEWAY_ADMIN_KEY>.")


def require_store(request: web.Request, *, keeps: str) -> tuple[KeyStore, KeyDirectory]:
    """The key store and its directory; 409 :class:`KeyStoreDisabled` ("This gateway
    keeps no ``keeps``") on a gateway without ``GATEWAY_KEY_STORE=redis``."""
    directory = request.app.get(KEYS)
    store = directory.store if directory is not None else None
    if directory is None or store is None or not request.app[SETTINGS].key_store:
        raise KeyStoreDisabled(
            f"This gateway keeps no {keeps}: set GATEWAY_KEY_STORE=redis (and REDIS_URL)."
        )
    return store, directory


__all__ = ["require_admin", "require_store"]
