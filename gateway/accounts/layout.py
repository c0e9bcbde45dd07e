"""Where limits, budgets and the usage ledger live in Redis, and the UTC periods they count.

Every key of one API key carries the hash tag ``{<key id>}``, so the Lua scripts over them
stay in one Redis Cluster slot::

    gw:rl:{<id>}:req:<unix minute>      requests admitted that minute (TTL 120 s)
    gw:rl:{<id>}:tok:<unix minute>      tokens settled that minute (TTL 120 s)
    gw:budget:{<id>}:<period>           hash {spent, reserved} in nusd; period 2026-12-05
                                        (day) or 2026-12 (month); expires 7 days after it
    gw:usage:{<id>}:<YYYY-MM-DD>        hash <tier>|<model>|<counter> (TTL 400 days)
    gw:usage:ids:<YYYY-MM-DD>           set of the key ids with usage that day
    gw:ledger:{<id>}:<writer>           the last ledger batch a gateway process applied

Budget periods and usage days follow the gateway's clock (UTC); the rate windows follow
Redis's (``TIME``), since replicas must agree on them to the second.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from gateway.accounts.model import Period

BUDGET_GRACE_S: Final = 7 * 86400
"""A budget hash outlives its period by this much (for reports and late settlements)."""
USAGE_TTL_S: Final = 400 * 86400
USAGE_COUNTERS: Final = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cost_nusd",
    "cloud_nusd",
)
"""The ``<counter>`` of a usage hash's fields, in the order the ledger batches them."""
STATIC_ID: Final = "_static"
"""The ledger id (and name) of traffic with a GATEWAY_API_KEYS key."""
ANONYMOUS_ID: Final = "_anonymous"
"""The ledger id (and name) of traffic without any key (no auth configured)."""


def rate_prefix(key_id: str) -> str:
    return f"gw:rl:{{{key_id}}}"


def budget_key(key_id: str, period_id: str) -> str:
    return f"gw:budget:{{{key_id}}}:{period_id}"


def usage_key(key_id: str, day: str) -> str:
    return f"gw:usage:{{{key_id}}}:{day}"


def usage_ids_key(day: str) -> str:
    return f"gw:usage:ids:{day}"


def writer_key(key_id: str, writer: str) -> str:
    return f"gw:ledger:{{{key_id}}}:{writer}"


def usage_field(tier: str, model: str, counter: str) -> str:
    return f"{tier}|{model}|{counter}"


@dataclass(frozen=True, slots=True)
class PeriodSpan:
    """One budget period: its id in key names and when it ends (Unix seconds, UTC)."""

    id: str
    ends_at: int


class Calendar:
    """UTC days and months for a clock, worked out once per day (a request reads it)."""

    __slots__ = ("_clock", "_day", "_day_number", "_month")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._day_number = -1
        self._day = PeriodSpan("", 0)
        self._month = PeriodSpan("", 0)

    def day(self) -> str:
        """Today (UTC) as ``YYYY-MM-DD``."""
        return self._refresh().id

    def period(self, period: Period) -> PeriodSpan:
        self._refresh()
        return self._day if period == "day" else self._month

    def _refresh(self) -> PeriodSpan:
        number = int(self._clock() // 86400)
        if number != self._day_number:
            self._day, self._month = _spans(number)
            self._day_number = number
        return self._day


def _spans(day_number: int) -> tuple[PeriodSpan, PeriodSpan]:
    start = time.gmtime(day_number * 86400)
    year, month = start.tm_year, start.tm_mon
    next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    month_end = calendar.timegm((*next_month, 1, 0, 0, 0, 0, 0, 0))
    return (
        PeriodSpan(time.strftime("%Y-%m-%d", start), (day_number + 1) * 86400),
        PeriodSpan(f"{year:04d}-{month:02d}", month_end),
    )


__all__ = [
    "ANONYMOUS_ID",
    "BUDGET_GRACE_S",
    "STATIC_ID",
    "USAGE_COUNTERS",
    "USAGE_TTL_S",
    "Calendar",
    "PeriodSpan",
    "budget_key",
    "rate_prefix",
    "usage_field",
    "usage_ids_key",
    "usage_key",
    "writer_key",
]
