"""The rules for a key's fields, the same for every way in (store, admin API, CLI).

Each check takes what a caller sent (JSON values, CLI arguments, Python values alike)
and returns the typed value, or raises :class:`~gateway.errors.InvalidRequest` naming
the field (``param``), so the admin API answers 400 and the CLI exits 2 with the same
words. The bounds keep every figure a 64-bit integer in Redis and in the limiter's Lua
(money is counted in nano-dollars there).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Final

from gateway.accounts.model import PERIODS, TIERS, Budget, Period
from gateway.errors import InvalidRequest
from hybrid_common.protocol import Tier

MAX_NAME_CHARS: Final = 64
MAX_PER_MINUTE: Final = 1_000_000_000
MAX_BUDGET_USD: Final = 1_000_000_000.0
"""10^9 USD is 10^18 nano-USD: still below 2^63."""
MAX_METADATA_PAIRS: Final = 16
MAX_METADATA_KEY_CHARS: Final = 64
MAX_METADATA_VALUE_CHARS: Final = 512
"""OpenAI's own bounds for ``metadata``."""

_KEY_ID: Final = re.compile(r"key_[0-9a-f]{12}")
_BUDGET_FIELDS: Final = ("period", "limit_usd", "soft_limit_usd")


def is_key_id(value: str) -> bool:
    """Whether ``value`` is an id as :func:`~gateway.accounts.model.new_key_id` makes
    them: no brace or colon can reach a Redis key name through one."""
    return _KEY_ID.fullmatch(value) is not None


def check_key_id(value: str, *, param: str = "key_id") -> str:
    """``value`` if :func:`is_key_id`; :class:`InvalidRequest` naming ``param`` if not."""
    if not is_key_id(value):
        raise InvalidRequest(
            f"{param} must look like key_0123456789ab (got {value[:40]!r}).", param=param
        )
    return value


def check_name(value: object, *, param: str = "name") -> str:
    """1 to 64 printable characters, surrounding spaces dropped."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{param} must be a string.", param=param)
    name = value.strip()
    if not 0 < len(name) <= MAX_NAME_CHARS or not name.isprintable():
        raise InvalidRequest(
            f"{param} must be 1 to {MAX_NAME_CHARS} printable characters "
            f"(got {len(name)} characters).",
            param=param,
        )
    return name


def check_per_minute(value: object, *, param: str) -> int | None:
    """A positive integer (requests or tokens per minute), or None: unlimited."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_PER_MINUTE:
        raise InvalidRequest(
            f"{param} must be a whole number from 1 to {MAX_PER_MINUTE}, or null for no "
            f"limit (got {value!r}).",
            param=param,
        )
    return value


def check_budget(value: object, *, param: str = "budget") -> Budget | None:
    """A :class:`Budget`, or a mapping ``{period, limit_usd, soft_limit_usd?}``; None: no
    budget. The soft limit, when given, is below the limit."""
    if value is None:
        return None
    if isinstance(value, Budget):
        period: object = value.period
        limit: object = value.limit_usd
        soft: object = value.soft_limit_usd
    elif isinstance(value, Mapping):
        for field in value:
            if field not in _BUDGET_FIELDS:
                raise InvalidRequest(
                    f"{param} has no field {str(field)[:40]!r}; it has "
                    + ", ".join(_BUDGET_FIELDS)
                    + ".",
                    param=f"{param}.{field}",
                )
        period, limit = value.get("period"), value.get("limit_usd")
        soft = value.get("soft_limit_usd")
    else:
        raise InvalidRequest(
            f"{param} must be an object {{period, limit_usd, soft_limit_usd}} or null.",
            param=param,
        )
    if period not in PERIODS:
        raise InvalidRequest(
            f"{param}.period must be one of {', '.join(PERIODS)} (got {period!r}).",
            param=f"{param}.period",
        )
    limit_usd = _usd(limit, param=f"{param}.limit_usd")
    soft_usd = None if soft is None else _usd(soft, param=f"{param}.soft_limit_usd")
    if soft_usd is not None and soft_usd >= limit_usd:
        raise InvalidRequest(
            f"{param}.soft_limit_usd ({soft_usd:g}) must be below limit_usd ({limit_usd:g}).",
            param=f"{param}.soft_limit_usd",
        )
    checked: Period = "day" if period == "day" else "month"
    return Budget(period=checked, limit_usd=limit_usd, soft_limit_usd=soft_usd)


def _usd(value: object, *, param: str) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 < value <= MAX_BUDGET_USD
    ):
        raise InvalidRequest(
            f"{param} must be a number of US dollars above 0 and at most {MAX_BUDGET_USD:g} "
            f"(got {value!r}).",
            param=param,
        )
    return float(value)


def check_tiers(value: object, *, param: str = "tiers") -> frozenset[Tier]:
    """A non-empty list of tier names (edge, cloud)."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidRequest(f"{param} must be a list of tiers: {', '.join(TIERS)}.", param=param)
    items = list(value)
    unknown = [item for item in items if item not in TIERS]
    if unknown or not items:
        got = f"{unknown[0]!r} is not a tier" if unknown else "it is empty"
        raise InvalidRequest(
            f"{param} must list one or more of {', '.join(TIERS)} ({got}).", param=param
        )
    return frozenset(tier for tier in TIERS if tier in items)


def check_metadata(value: object, *, param: str = "metadata") -> dict[str, str]:
    """Up to 16 string pairs (keys up to 64 characters, values up to 512); None: none."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{param} must be an object of strings.", param=param)
    if len(value) > MAX_METADATA_PAIRS:
        raise InvalidRequest(
            f"{param} holds at most {MAX_METADATA_PAIRS} pairs (got {len(value)}).", param=param
        )
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_METADATA_KEY_CHARS:
            raise InvalidRequest(
                f"{param} keys must be 1 to {MAX_METADATA_KEY_CHARS} characters "
                f"(got {str(key)[:40]!r}).",
                param=param,
            )
        if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE_CHARS:
            raise InvalidRequest(
                f"{param}.{key} must be a string of at most {MAX_METADATA_VALUE_CHARS} characters.",
                param=f"{param}.{key}",
            )
        out[key] = item
    return out


__all__ = [
    "MAX_BUDGET_USD",
    "MAX_METADATA_KEY_CHARS",
    "MAX_METADATA_PAIRS",
    "MAX_METADATA_VALUE_CHARS",
    "MAX_NAME_CHARS",
    "MAX_PER_MINUTE",
    "check_budget",
    "check_key_id",
    "check_metadata",
    "check_name",
    "check_per_minute",
    "check_tiers",
    "is_key_id",
]
