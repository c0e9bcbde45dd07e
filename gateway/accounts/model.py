"""An API key as the gateway stores it: who it is, what it may use, and its limits.

The plain key is never stored: only its SHA-256 (:func:`key_hash`). Keys are 256-bit
random tokens, so a fast hash is enough (there is no password to guess slowly).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from hybrid_common.protocol import TIERS, Tier

Period = Literal["day", "month"]
PERIODS: tuple[Period, ...] = ("day", "month")

KEY_PREFIX = "sk-gw-"
"""Every key the gateway issues starts so (secret scanners and people can spot one)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """Spending allowed per calendar period (UTC), in US dollars."""

    period: Period
    limit_usd: float
    soft_limit_usd: float | None = None
    """Past this, answers still flow, with a warning header and metric."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKey:
    """One key's record (never the key itself)."""

    id: str
    """Short and stable: what logs, traces, metrics and the admin API name the key by."""
    name: str
    hash: str
    """SHA-256 hex of the plain key."""
    created_at: float
    """Unix seconds."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    rpm: int | None = None
    """Requests per minute, across every replica; None: unlimited."""
    tpm: int | None = None
    """Prompt plus completion tokens per minute; None: unlimited."""
    budget: Budget | None = None
    tiers: frozenset[Tier] = frozenset(TIERS)
    """The tiers the key may be served by (a free plan: edge only)."""
    revoked_at: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def limited(self) -> bool:
        """Whether a request with this key needs the limiter at all."""
        return self.rpm is not None or self.tpm is not None or self.budget is not None


def new_secret() -> str:
    """A fresh plain key: the prefix and 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


def token_bytes(text: str) -> bytes:
    """``text`` as the bytes it was read from (headers and the environment are decoded as
    UTF-8 with ``surrogateescape``); any other surrogate passes through, never raises."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def key_hash(plain: str | bytes) -> str:
    raw = plain.encode("utf-8", "surrogateescape") if isinstance(plain, str) else plain
    return hashlib.sha256(raw).hexdigest()


__all__ = [
    "KEY_PREFIX",
    "PERIODS",
    "TIERS",
    "ApiKey",
    "Budget",
    "Period",
    "key_hash",
    "new_key_id",
    "new_secret",
    "token_bytes",
]
