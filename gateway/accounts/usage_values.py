"""The values of a usage report (:mod:`gateway.accounts.usage` reads them from the ledger):
integer nano-USD inside, dollars only in the JSON of ``/v1/usage``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Final, TypedDict

from gateway.accounts.pricing import NUSD_PER_USD


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Counters summed over some requests; money in integer nano-USD."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_nusd: int = 0
    cloud_nusd: int = 0
    """What the same tokens would have cost had the cloud answered them."""

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            requests=self.requests + other.requests,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_nusd=self.cost_nusd + other.cost_nusd,
            cloud_nusd=self.cloud_nusd + other.cloud_nusd,
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def saved_nusd(self) -> int:
        return self.cloud_nusd - self.cost_nusd

    @property
    def saved_share(self) -> float | None:
        """The saving as a share of the cloud equivalent; None when that is 0."""
        return self.saved_nusd / self.cloud_nusd if self.cloud_nusd else None

    def to_json(self) -> UsageJson:
        share = self.saved_share
        return UsageJson(
            requests=self.requests,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.total_tokens,
            cost_usd=usd(self.cost_nusd),
            cloud_equivalent_usd=usd(self.cloud_nusd),
            saved_usd=usd(self.saved_nusd),
            saved_share=round(share, 6) if share is not None else None,
        )


ZERO: Final = Usage()


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelUsage:
    tier: str
    model: str
    usage: Usage


@dataclass(frozen=True, slots=True, kw_only=True)
class DayUsage:
    day: date
    usage: Usage


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyUsage:
    """One key's usage over the report's range."""

    key_id: str
    key_name: str | None
    """None when the key's record is gone (or unreadable)."""
    tiers: Mapping[str, Usage]
    """``edge`` and ``cloud`` always, then any other tier the ledger named."""
    models: tuple[ModelUsage, ...]
    """By tier, then model."""
    days: tuple[DayUsage, ...]
    """Days with usage only, oldest first."""
    total: Usage


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageReport:
    start: date
    end: date
    """Inclusive, UTC."""
    keys: tuple[KeyUsage, ...]
    """By key id."""
    tiers: Mapping[str, Usage] = field(default_factory=dict)
    """Summed over the keys."""
    total: Usage = ZERO

    def to_json(self) -> UsageReportJson:
        """The ``GET /v1/usage`` body (docs/keys-and-budgets.md, "Usage and savings")."""
        return UsageReportJson(
            object="usage",
            start=self.start.isoformat(),
            end=self.end.isoformat(),
            data=[_key_json(k) for k in self.keys],
            tiers={tier: u.to_json() for tier, u in self.tiers.items()},
            total=self.total.to_json(),
        )


class UsageJson(TypedDict):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float
    cloud_equivalent_usd: float
    saved_usd: float
    saved_share: float | None


class ModelUsageJson(UsageJson):
    tier: str
    model: str


class DayUsageJson(UsageJson):
    date: str


class KeyUsageJson(TypedDict):
    key_id: str
    key_name: str | None
    tiers: dict[str, UsageJson]
    models: list[ModelUsageJson]
    days: list[DayUsageJson]
    total: UsageJson


class UsageReportJson(TypedDict):
    object: str
    start: str
    end: str
    data: list[KeyUsageJson]
    tiers: dict[str, UsageJson]
    total: UsageJson


def usd(nusd: int) -> float:
    """Nano-USD as dollars, exact to the nano-dollar as far as a float goes."""
    return round(nusd / NUSD_PER_USD, 9)


def _key_json(key: KeyUsage) -> KeyUsageJson:
    return KeyUsageJson(
        key_id=key.key_id,
        key_name=key.key_name,
        tiers={tier: u.to_json() for tier, u in key.tiers.items()},
        models=[
            ModelUsageJson(tier=m.tier, model=m.model, **m.usage.to_json()) for m in key.models
        ],
        days=[DayUsageJson(date=d.day.isoformat(), **d.usage.to_json()) for d in key.days],
        total=key.total.to_json(),
    )
