"""The key admin API: ``/admin/keys``, guarded by ``Authorization: Bearer $GATEWAY_ADMIN_KEY``.

- ``POST /admin/keys`` ``{name, metadata?, rpm?, tpm?, budget?, tiers?}``: 201 with the
  key's record and, this once, the plain key as ``key``.
- ``GET /admin/keys`` (``?include_revoked=true`` for revoked ones too): ``{"object":
  "list", "data": [...]}``, oldest first.
- ``GET /admin/keys/{key_id}``: the record.
- ``PATCH /admin/keys/{key_id}``: the fields sent change; ``null`` clears ``rpm``,
  ``tpm``, ``budget`` and ``metadata``; a ``budget`` replaces the whole budget.
- ``DELETE /admin/keys/{key_id}``: revokes the key (for good) and answers 200 with the
  record, ``revoked_at`` set; revoking again changes nothing.

A record is :class:`~gateway.accounts.codec.KeyView` (never the hash, never the key).
Errors: 401/403 from :func:`require_admin`; 400 naming the field (unknown fields too);
404 ``key_not_found``; 409 ``key_store_disabled`` on a gateway without
``GATEWAY_KEY_STORE=redis`` (its configuration, not an outage); 503
``key_store_unavailable`` while Redis does not answer. A change made here is seen by
this replica at once and by every other within a second.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import orjson
from aiohttp import web

from gateway.accounts import codec, fields
from gateway.accounts.directory import KeyDirectory
from gateway.accounts.model import ApiKey
from gateway.accounts.store import KEEP, KeyStore
from gateway.errors import InvalidJSON, InvalidRequest
from gateway.http.admin_auth import require_admin, require_store
from gateway.http.body import read_body
from gateway.state import SETTINGS

MAX_BODY_BYTES: Final = 64 * 1024
_FIELDS: Final = ("name", "metadata", "rpm", "tpm", "budget", "tiers")
_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no", ""})


def _keys(request: web.Request) -> tuple[KeyStore, KeyDirectory]:
    require_admin(request)
    return require_store(request, keeps="API keys")


def _key_id(request: web.Request) -> str:
    return fields.check_key_id(request.match_info["key_id"])


async def _fields(request: web.Request) -> Mapping[str, object]:
    """The JSON object a request sends, with only the fields a key has."""
    raw = await read_body(
        request,
        max_body_bytes=MAX_BODY_BYTES,
        timeout_s=request.app[SETTINGS].connections.body_timeout_s,
    )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    for name in body:
        if name not in _FIELDS:
            raise InvalidRequest(
                f"Unknown field {name[:40]!r}; a key has: {', '.join(_FIELDS)}.",
                param=name[:40],
            )
    return body


async def create_key(request: web.Request) -> web.Response:
    store, _ = _keys(request)
    body = await _fields(request)
    if "name" not in body:
        raise InvalidRequest("name is required.", param="name")
    key, plain = await store.create(
        name=fields.check_name(body["name"]),
        metadata=fields.check_metadata(body.get("metadata")),
        rpm=fields.check_per_minute(body.get("rpm"), param="rpm"),
        tpm=fields.check_per_minute(body.get("tpm"), param="tpm"),
        budget=fields.check_budget(body.get("budget")),
        tiers=None if body.get("tiers") is None else fields.check_tiers(body["tiers"]),
    )
    return web.json_response(codec.created_view(key, plain), status=201)


async def list_keys(request: web.Request) -> web.Response:
    store, _ = _keys(request)
    text = request.rel_url.query.get("include_revoked", "false").strip().lower()
    if text not in _TRUE | _FALSE:
        raise InvalidRequest(
            f"include_revoked must be true or false (got {text[:20]!r}).", param="include_revoked"
        )
    keys = await store.list(include_revoked=text in _TRUE)
    return web.json_response(codec.list_view(keys))


async def get_key(request: web.Request) -> web.Response:
    store, _ = _keys(request)
    return _record(await store.get(_key_id(request)))


async def update_key(request: web.Request) -> web.Response:
    store, directory = _keys(request)
    key_id = _key_id(request)
    body = await _fields(request)
    if "tiers" in body and body["tiers"] is None:
        raise InvalidRequest("tiers cannot be null: list the tiers the key may use.", param="tiers")
    key = await store.update(
        key_id,
        name=fields.check_name(body["name"]) if "name" in body else KEEP,
        metadata=fields.check_metadata(body["metadata"]) if "metadata" in body else KEEP,
        rpm=fields.check_per_minute(body["rpm"], param="rpm") if "rpm" in body else KEEP,
        tpm=fields.check_per_minute(body["tpm"], param="tpm") if "tpm" in body else KEEP,
        budget=fields.check_budget(body["budget"]) if "budget" in body else KEEP,
        tiers=fields.check_tiers(body["tiers"]) if "tiers" in body else KEEP,
    )
    directory.forget(key.hash)  # this replica at once; the others within ttl_s
    return _record(key)


async def revoke_key(request: web.Request) -> web.Response:
    store, directory = _keys(request)
    key = await store.revoke(_key_id(request))
    directory.forget(key.hash)
    return _record(key)


def _record(key: ApiKey) -> web.Response:
    return web.json_response(codec.key_view(key))


# Any segment reaches the handler, so a malformed id gets a 400 naming it, not a bare 404.
_ONE = "/admin/keys/{key_id:[^/]+}"


def add_admin_key_routes(app: web.Application) -> None:
    app.router.add_post("/admin/keys", create_key)
    app.router.add_get("/admin/keys", list_keys)
    app.router.add_get(_ONE, get_key)
    app.router.add_patch(_ONE, update_key)
    app.router.add_delete(_ONE, revoke_key)


__all__ = ["add_admin_key_routes"]
