"""``Authorization: Bearer <token>``: reading the token, and comparing it with a key.

Shared by the API-key middleware (keys from GATEWAY_API_KEYS) and the admin API's guard
(GATEWAY_ADMIN_KEY), so both read the header and compare keys the same way.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from gateway.accounts.model import token_bytes


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value; None for anything else."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def same_key(token: str, key: str) -> bool:
    """Whether ``token`` is ``key``, compared as bytes in constant time.

    A header that is not UTF-8 reaches here surrogate-escaped by aiohttp: it is compared
    as the bytes it was, and is just a wrong key.
    """
    return hmac.compare_digest(token_bytes(token), token_bytes(key))


def matching_key(token: str, keys: Iterable[str]) -> str | None:
    """The key of ``keys`` that ``token`` presents, compared with every one of them (the
    time taken does not say which one matched)."""
    presented = token_bytes(token)
    matched: str | None = None
    for key in keys:
        if hmac.compare_digest(presented, token_bytes(key)):
            matched = key
    return matched


__all__ = ["bearer_token", "matching_key", "same_key"]
