"""Reading the usage ledger back: what each key used, what it cost, and what routing saved.

The ledger (written by :mod:`gateway.accounts.ledger`) keeps one hash per key and UTC day,
``gw:usage:{<key id>}:<YYYY-MM-DD>``, with integer fields ``<tier>|<model>|<counter>`` for
the counters ``requests``, ``prompt_tokens``, ``completion_tokens``, ``cost_nusd`` and
``cloud_nusd`` (what the same tokens would have cost at the cloud tier's price), and one
set per day, ``gw:usage:ids:<YYYY-MM-DD>``, of the key ids with usage that day.

**The saving** is ``cloud_nusd - cost_nusd``: the money not spent because a request was
answered where it was. Answers the cloud gave save nothing (their cost is their cloud
price, unless a model of their own is priced apart); answers at the edge save their cloud
price less the edge's running cost. It can be negative where a served model is priced
above the cloud's default. Sums are kept in integer nano-USD, so a report over many days
adds up exactly; dollars appear only in :meth:`UsageReport.to_json`.

**Reads are batched**: one pipeline for the days' id sets, then the (key, day) hashes in
pipelines of :data:`BATCH` commands (one round trip each), then one pipeline for the key
records' names. A range is at most :data:`MAX_DAYS` days (the ledger's own retention).
Every Redis failure leaves as :class:`UsageStoreUnavailable` (503 with Retry-After); a
gateway without the key store keeps no ledger (409
:class:`~gateway.accounts.errors.KeyStoreDisabled`, raised by the API).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date, timedelta
from typing import Final, Literal

from redis.exceptions import RedisClusterException, RedisError

from gateway.accounts.errors import UsageStoreUnavailable
from gateway.accounts.fields import is_key_id
from gateway.accounts.layout import (
    ANONYMOUS_ID,
    STATIC_ID,
    USAGE_COUNTERS,
    usage_ids_key,
    usage_key,
)
from gateway.accounts.store import record_key
from gateway.accounts.usage_values import (
    ZERO,
    DayUsage,
    KeyUsage,
    ModelUsage,
    Usage,
    UsageReport,
    UsageReportJson,
    usd,
)
from gateway.errors import InvalidRequest
from gateway.redis_client import Client
from hybrid_common.protocol import TIERS

log = logging.getLogger("gateway.accounts")

MAX_DAYS: Final = 400
"""The longest range one report reads: the ledger keeps each day's hash 400 days."""
BATCH: Final = 500
"""Commands per pipeline: bounds one round trip's reply (and memory) on long ranges."""
READ_TIMEOUT_S: Final = 10.0
"""A whole report's deadline; a Redis that has not answered by then is down."""
RESERVED_IDS: Final = frozenset({STATIC_ID, ANONYMOUS_ID})
"""Ledger ids of traffic without a stored key (GATEWAY_API_KEYS, or no auth): their name
is their id."""
_DAY: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


# ---------------------------------------------------------------------------- the checks


def check_range(start: date, end: date, *, param: str = "end") -> None:
    """Raise :class:`InvalidRequest` (naming ``param``) unless ``start..end`` is 1 to
    :data:`MAX_DAYS` days."""
    if end < start:
        raise InvalidRequest(
            f"end ({end.isoformat()}) is before start ({start.isoformat()}).", param=param
        )
    days = (end - start).days + 1
    if days > MAX_DAYS:
        raise InvalidRequest(
            f"The range {start.isoformat()}..{end.isoformat()} is {days} days; a report "
            f"covers at most {MAX_DAYS} (the ledger keeps {MAX_DAYS} days).",
            param=param,
        )


def check_key_id(key_id: str, *, param: str = "key_id") -> str:
    """``key_id`` when it names a key's ledger: a key id, ``_static`` or ``_anonymous``."""
    if key_id in RESERVED_IDS or is_key_id(key_id):
        return key_id
    raise InvalidRequest(
        f"{param} must look like key_0123456789ab, or be _static or _anonymous "
        f"(got {key_id[:40]!r}).",
        param=param,
    )


def parse_day(text: str, *, param: str) -> date:
    """A ``YYYY-MM-DD`` date, or :class:`InvalidRequest` naming ``param``."""
    try:
        if _DAY.fullmatch(text):
            return date.fromisoformat(text)
    except ValueError:
        pass  # 2026-02-30: the shape is right, the date is not
    raise InvalidRequest(f"{param} must be a date YYYY-MM-DD, got {text[:40]!r}.", param=param)


def report_range(
    *, period: str | None, start: str | None, end: str | None, today: date
) -> tuple[date, date]:
    """The UTC days a report covers, from either ``period`` or ``start``/``end``.

    ``period=day``: today; ``month``: this month's first day to today. Otherwise ``end``
    defaults to today and ``start`` to ``end`` (both unset: today). Bad input raises
    :class:`InvalidRequest` naming the parameter at fault.
    """
    if period is not None:
        if start is not None or end is not None:
            raise InvalidRequest("Give either period or start/end, not both.", param="period")
        if period == "day":
            return today, today
        if period == "month":
            return today.replace(day=1), today
        raise InvalidRequest(f"period must be day or month, got {period[:40]!r}.", param="period")
    last = parse_day(end, param="end") if end is not None else today
    first = parse_day(start, param="start") if start is not None else last
    # The parameter given is the one at fault: ``start`` alone, after today, names start.
    check_range(first, last, param="end" if end is not None else "start")
    return first, last


# ---------------------------------------------------------------------------- reading


async def usage_report(redis: Client, *, key_id: str | None, start: date, end: date) -> UsageReport:
    """Usage of ``key_id`` (or of every key with usage) on the UTC days ``start..end``.

    A named key always gets its entry, with zeros if it used nothing (its ``key_name``
    None if no such key is stored); all keys: only those with usage in the range.
    """
    check_range(start, end)
    if key_id is not None:
        check_key_id(key_id)
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            if key_id is not None:
                pairs = [(key_id, day) for day in days]
            else:
                pairs = await _pairs_with_usage(redis, days)
            hashes = await _read(redis, [usage_key(k, d.isoformat()) for k, d in pairs], "hgetall")
            ids = sorted({k for k, _ in pairs} if key_id is None else {key_id})
            records = await _read(redis, [record_key(k) for k in ids], "get")
    except TimeoutError as exc:
        raise UsageStoreUnavailable(
            f"The usage ledger (Redis) did not answer within {READ_TIMEOUT_S:g} s."
        ) from exc
    except (RedisError, RedisClusterException, OSError) as exc:
        raise UsageStoreUnavailable(
            f"The usage ledger (Redis) is unavailable: {type(exc).__name__}: {exc}"
        ) from exc
    per_key: dict[str, list[tuple[date, Mapping[bytes, bytes]]]] = defaultdict(list)
    for (k, day), fields in zip(pairs, hashes, strict=True):
        if isinstance(fields, dict) and fields:
            per_key[k].append((day, fields))
    keys = tuple(
        _key_usage(k, _name(k, record), per_key.get(k, ()))
        for k, record in zip(ids, records, strict=True)
        if key_id is not None or k in per_key
    )
    tiers = _sum_tiers(k.tiers for k in keys)
    return UsageReport(
        start=start,
        end=end,
        keys=keys,
        tiers=tiers,
        total=sum((k.total for k in keys), ZERO),
    )


async def _pairs_with_usage(redis: Client, days: Sequence[date]) -> list[tuple[str, date]]:
    """(key id, day) for every key in each day's id set."""
    members = await _read(redis, [usage_ids_key(d.isoformat()) for d in days], "smembers")
    return [
        (raw.decode("utf-8", "replace"), day)
        for day, ids in zip(days, members, strict=True)
        if isinstance(ids, set)
        for raw in sorted(ids)
    ]


async def _read(
    redis: Client, keys: Sequence[str], command: Literal["get", "hgetall", "smembers"]
) -> list[object]:
    """``command`` on each key, :data:`BATCH` commands per round trip, in order."""
    replies: list[object] = []
    for chunk in _chunks(keys, BATCH):
        async with redis.pipeline(transaction=False) as pipe:
            for key in chunk:
                getattr(pipe, command)(key)
            replies.extend(await pipe.execute())
    return replies


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _name(key_id: str, record: object) -> str | None:
    if isinstance(record, bytes):
        try:
            doc = json.loads(record)
        except ValueError:
            doc = None
        name = doc.get("name") if isinstance(doc, dict) else None
        if isinstance(name, str):
            return name
        log.warning("usage: the record of key %s has no readable name", key_id)
    return key_id if key_id in RESERVED_IDS else None


def _key_usage(
    key_id: str, name: str | None, days: Iterable[tuple[date, Mapping[bytes, bytes]]]
) -> KeyUsage:
    models: dict[tuple[str, str], Usage] = defaultdict(Usage)
    by_day: list[DayUsage] = []
    for day, fields in days:
        today = _parse_hash(key_id, day, fields)
        for tier_model, usage in today.items():
            models[tier_model] += usage
        day_total = sum(today.values(), ZERO)
        if day_total != ZERO:
            by_day.append(DayUsage(day=day, usage=day_total))
    per_model = sorted(models.items())
    tiers = _sum_tiers({tier: usage} for (tier, _), usage in per_model)
    return KeyUsage(
        key_id=key_id,
        key_name=name,
        tiers=tiers,
        models=tuple(
            ModelUsage(tier=tier, model=model, usage=usage) for (tier, model), usage in per_model
        ),
        days=tuple(by_day),
        total=sum(tiers.values(), ZERO),
    )


def _parse_hash(
    key_id: str, day: date, fields: Mapping[bytes, bytes]
) -> dict[tuple[str, str], Usage]:
    """One day's hash as usage per (tier, model). Fields it does not know are skipped
    (logged): a newer gateway may count more than this one reads."""
    counters: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for raw_field, raw_value in fields.items():
        name = raw_field.decode("utf-8", "replace")
        tier, _, rest = name.partition("|")
        model, _, counter = rest.rpartition("|")  # a model name may itself hold "|"
        value = _int(raw_value)
        if not tier or not model or counter not in USAGE_COUNTERS or value is None:
            log.warning("usage: skipped field %r of %s", name, usage_key(key_id, day.isoformat()))
            continue
        counters[tier, model][counter] = value
    return {tier_model: Usage(**values) for tier_model, values in counters.items()}


def _int(raw: bytes) -> int | None:
    try:
        return int(raw)
    except ValueError:
        try:
            return round(float(raw))  # HINCRBYFLOAT, should a writer ever use it
        except (ValueError, OverflowError):  # not a number, nan, inf
            return None


def _sum_tiers(all_tiers: Iterable[Mapping[str, Usage]]) -> dict[str, Usage]:
    """Usage per tier, summed in order; every tier of :data:`TIERS` present (zeros when
    unused)."""
    out: dict[str, Usage] = {tier: ZERO for tier in TIERS}
    for tiers in all_tiers:
        for tier, usage in tiers.items():
            out[tier] = out.get(tier, ZERO) + usage
    return out


__all__ = [
    "MAX_DAYS",
    "DayUsage",
    "KeyUsage",
    "ModelUsage",
    "Usage",
    "UsageReport",
    "UsageReportJson",
    "UsageStoreUnavailable",
    "check_key_id",
    "check_range",
    "parse_day",
    "report_range",
    "usage_report",
    "usd",
]
