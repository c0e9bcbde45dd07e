"""A key record as JSON: the form stored in Redis, and the form the admin API and CLI show.

The stored form carries the key's SHA-256 and a format version ``v``; the shown form
(:class:`KeyView`, OpenAI's ``object`` style, times as whole Unix seconds) never carries
the hash. Neither ever holds the plain key: only the answer that creates a key shows it
(:class:`CreatedKeyView`).
"""

from __future__ import annotations

from typing import Final, Literal, TypedDict

import orjson

from gateway.accounts.fields import check_budget, check_metadata, check_per_minute, check_tiers
from gateway.accounts.model import TIERS, ApiKey, Budget
from gateway.errors import InvalidRequest
from gateway.jsonio import dumps

FORMAT_VERSION: Final = 1


class BudgetView(TypedDict):
    period: str
    limit_usd: float
    soft_limit_usd: float | None


class KeyView(TypedDict):
    object: Literal["api_key"]
    id: str
    name: str
    metadata: dict[str, str]
    rpm: int | None
    tpm: int | None
    budget: BudgetView | None
    tiers: list[str]
    created_at: int
    revoked_at: int | None


class CreatedKeyView(KeyView):
    key: str
    """The plain key: in the answer that creates it, and never again."""


class KeyListView(TypedDict):
    object: Literal["list"]
    data: list[KeyView]


class UnreadableRecord(ValueError):
    """A stored record that is not a key record this gateway can read."""


def encode(key: ApiKey) -> bytes:
    """The record as stored under ``gw:key:{<id>}``."""
    return dumps(
        {
            "v": FORMAT_VERSION,
            "id": key.id,
            "name": key.name,
            "hash": key.hash,
            "created_at": key.created_at,
            "metadata": dict(key.metadata),
            "rpm": key.rpm,
            "tpm": key.tpm,
            "budget": _budget_view(key.budget),
            "tiers": [tier for tier in TIERS if tier in key.tiers],
            "revoked_at": key.revoked_at,
        }
    )


def decode(raw: bytes | str) -> ApiKey:
    """A stored record back; :class:`UnreadableRecord` for anything else."""
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or data.get("v") != FORMAT_VERSION:
            raise UnreadableRecord(f"not a key record of format {FORMAT_VERSION}")
        key_id, name, digest = data["id"], data["name"], data["hash"]
        created_at, revoked_at = data["created_at"], data.get("revoked_at")
        if not (isinstance(key_id, str) and isinstance(name, str) and isinstance(digest, str)):
            raise UnreadableRecord("id, name and hash must be strings")
        if not isinstance(created_at, int | float) or not isinstance(
            revoked_at, int | float | None
        ):
            raise UnreadableRecord("created_at and revoked_at must be numbers")
        return ApiKey(
            id=key_id,
            name=name,
            hash=digest,
            created_at=float(created_at),
            metadata=check_metadata(data.get("metadata")),
            rpm=check_per_minute(data.get("rpm"), param="rpm"),
            tpm=check_per_minute(data.get("tpm"), param="tpm"),
            budget=check_budget(data.get("budget")),
            tiers=check_tiers(data.get("tiers", list(TIERS))),
            revoked_at=None if revoked_at is None else float(revoked_at),
        )
    except (orjson.JSONDecodeError, KeyError, InvalidRequest) as exc:
        raise UnreadableRecord(str(exc)) from exc


def key_view(key: ApiKey) -> KeyView:
    """What the admin API and ``keys show --json`` print of a key."""
    return KeyView(
        object="api_key",
        id=key.id,
        name=key.name,
        metadata=dict(key.metadata),
        rpm=key.rpm,
        tpm=key.tpm,
        budget=_budget_view(key.budget),
        tiers=[tier for tier in TIERS if tier in key.tiers],
        created_at=int(key.created_at),
        revoked_at=None if key.revoked_at is None else int(key.revoked_at),
    )


def created_view(key: ApiKey, plain: str) -> CreatedKeyView:
    return CreatedKeyView(**key_view(key), key=plain)


def list_view(keys: list[ApiKey]) -> KeyListView:
    return KeyListView(object="list", data=[key_view(key) for key in keys])


def _budget_view(budget: Budget | None) -> BudgetView | None:
    if budget is None:
        return None
    return BudgetView(
        period=budget.period, limit_usd=budget.limit_usd, soft_limit_usd=budget.soft_limit_usd
    )


__all__ = [
    "FORMAT_VERSION",
    "BudgetView",
    "CreatedKeyView",
    "KeyListView",
    "KeyView",
    "UnreadableRecord",
    "created_view",
    "decode",
    "encode",
    "key_view",
    "list_view",
]
