"""``python -m gateway usage``: what each key used, what it cost, and what routing saved.

Reads the usage ledger in Redis (``REDIS_URL``; ``REDIS_CLUSTER=1`` for a cluster), the
one that gateways running with ``GATEWAY_KEY_STORE=redis`` write. Prints a table per key
and tier (requests, tokens, cost, the cost had the cloud answered everything, and the
difference: the saving), or with ``--json`` the ``GET /v1/usage`` body.

Range: ``--period day`` (today, UTC), ``--period month`` (this month to today), or
``--start DATE`` and/or ``--end DATE`` (inclusive; ``end`` defaults to today, ``start``
to ``end``), at most 400 days.

Exit status: 0 reported; 1 Redis unreachable; 2 bad arguments or settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime

from gateway.accounts.usage import (
    Usage,
    UsageReport,
    UsageStoreUnavailable,
    check_key_id,
    report_range,
    usage_report,
    usd,
)
from gateway.errors import InvalidRequest
from gateway.redis_client import close_client, redis_client
from gateway.settings import SettingsError, settings_from_env

_TIMEOUT_S = 5.0
_COLUMNS = (
    ("KEY", "<", 16),
    ("NAME", "<", 18),
    ("TIER", "<", 6),
    ("REQUESTS", ">", 9),
    ("PROMPT_TOK", ">", 11),
    ("COMPL_TOK", ">", 10),
    ("COST_USD", ">", 12),
    ("CLOUD_EQ_USD", ">", 13),
    ("SAVED_USD", ">", 12),
)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway usage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--key", metavar="ID", help="one key's usage (default: every key)")
    parser.add_argument("--period", choices=("day", "month"), help="today or this month (UTC)")
    parser.add_argument("--start", metavar="DATE", help="first day, YYYY-MM-DD (UTC)")
    parser.add_argument("--end", metavar="DATE", help="last day, YYYY-MM-DD (default: today)")
    parser.add_argument("--json", action="store_true", help="the GET /v1/usage body as JSON")
    args = parser.parse_args(argv)
    try:
        start, end = report_range(
            period=args.period, start=args.start, end=args.end, today=datetime.now(UTC).date()
        )
        key_id = check_key_id(args.key, param="key") if args.key is not None else None
        settings = settings_from_env()  # REDIS_URL and REDIS_CLUSTER, as the gateway reads them
    except (InvalidRequest, SettingsError) as exc:
        print(f"error: {_message(exc)}", file=sys.stderr)
        return 2
    if settings.redis_url is None:
        print(
            "error: set REDIS_URL to the Redis the gateways keep their ledger in", file=sys.stderr
        )
        return 2
    try:
        report = asyncio.run(
            _report(settings.redis_url, settings.redis_cluster, key_id, start, end)
        )
    except UsageStoreUnavailable as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(render_table(report, key_id=key_id))
    return 0


def _message(exc: Exception) -> str:
    """An argument error in the command line's words (``--end``, not ``end``)."""
    if isinstance(exc, InvalidRequest):
        return f"--{exc.param}: {exc.message}" if exc.param else exc.message
    return str(exc)


async def _report(
    url: str, cluster: bool, key_id: str | None, start: date, end: date
) -> UsageReport:
    client = redis_client(url, cluster=cluster, max_connections=2, timeout_s=_TIMEOUT_S)
    try:
        return await usage_report(client, key_id=key_id, start=start, end=end)
    finally:
        await close_client(client)


def render_table(report: UsageReport, *, key_id: str | None = None) -> str:
    """The report as a plain-text table: a row per key and tier, then the totals."""
    which = f"key {key_id}" if key_id is not None else f"{len(report.keys)} key(s) with usage"
    lines = [f"Usage {report.start} .. {report.end} (UTC), {which}", ""]
    lines.append(_row(*(name for name, _, _ in _COLUMNS)))
    for key in report.keys:
        lines.extend(_key_rows(key.key_id, key.key_name or "-", key.tiers, key.total))
    if len(report.keys) != 1:
        lines.extend(_key_rows("ALL", "", report.tiers, report.total))
    lines += ["", _saving(report.total), ""]
    return "\n".join(lines)


def _key_rows(key: str, name: str, tiers: Mapping[str, Usage], total: Usage) -> list[str]:
    rows = []
    for i, (tier, usage) in enumerate([*tiers.items(), ("total", total)]):
        rows.append(_row(key if i == 0 else "", name if i == 0 else "", tier, *_figures(usage)))
    return rows


def _figures(usage: Usage) -> tuple[str, ...]:
    return (
        str(usage.requests),
        str(usage.prompt_tokens),
        str(usage.completion_tokens),
        f"{usd(usage.cost_nusd):.6f}",
        f"{usd(usage.cloud_nusd):.6f}",
        f"{usd(usage.saved_nusd):.6f}",
    )


def _row(*cells: str) -> str:
    parts = []
    for (_, align, width), cell in zip(_COLUMNS, cells, strict=True):
        text = cell if len(cell) <= width else cell[: width - 1] + "~"
        parts.append(f"{text:{align}{width}}")
    return "  ".join(parts).rstrip()


def _saving(total: Usage) -> str:
    if total.cloud_nusd == 0:
        return "Saved: $0 (nothing in this range was priced at cloud rates)."
    share = total.saved_share or 0.0
    return (
        f"Saved: ${usd(total.saved_nusd):.6f} of ${usd(total.cloud_nusd):.6f} "
        f"had the cloud answered everything ({share:.1%})."
    )
