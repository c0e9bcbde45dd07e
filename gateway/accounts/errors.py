"""Errors of the key admin and usage APIs and CLIs, in the gateway's tree (see gateway/errors.py)::

    GatewayError
    ├── ClientError
    │   ├── InvalidRequest (400, names the field: gateway.accounts.fields)
    │   ├── KeyNotFound (404 key_not_found)
    │   └── KeyStoreDisabled (409 key_store_disabled)
    └── RetryLater
        ├── KeyStoreUnavailable (503 key_store_unavailable, with Retry-After: gateway.errors)
        └── UsageStoreUnavailable (503 usage_store_unavailable, with Retry-After)

409, not 503, for a gateway without ``GATEWAY_KEY_STORE=redis``: it is the gateway's
configuration, not an outage, and asking again will not help.
"""

from __future__ import annotations

from gateway.errors import ClientError, RetryLater


class KeyNotFound(ClientError):
    status = 404
    code = "key_not_found"


class KeyStoreDisabled(ClientError):
    status = 409
    code = "key_store_disabled"


class UsageStoreUnavailable(RetryLater):
    """Redis did not answer the ledger reads (down, or past the deadline)."""

    code = "usage_store_unavailable"


__all__ = ["KeyNotFound", "KeyStoreDisabled", "UsageStoreUnavailable"]
