"""Errors of the key admin API and CLI, in the gateway's tree (see gateway/errors.py)::

    GatewayError
    ├── ClientError
    │   ├── InvalidRequest (400, names the field: gateway.accounts.fields)
    │   ├── KeyNotFound (404 key_not_found)
    │   └── KeyStoreDisabled (409 key_store_disabled)
    └── KeyStoreUnavailable (503 key_store_unavailable, with Retry-After: gateway.errors)

409, not 503, for a gateway without ``GATEWAY_KEY_STORE=redis``: it is the gateway's
configuration, not an outage, and asking again will not help.
"""

from __future__ import annotations

from gateway.errors import ClientError


class KeyNotFound(ClientError):
    status = 404
    code = "key_not_found"


class KeyStoreDisabled(ClientError):
    status = 409
    code = "key_store_disabled"


__all__ = ["KeyNotFound", "KeyStoreDisabled"]
