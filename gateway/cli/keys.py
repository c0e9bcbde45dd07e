"""``python -m gateway keys {create,list,show,update,revoke}``: API keys in Redis.

The keys a gateway with ``GATEWAY_KEY_STORE=redis`` accepts, kept in Redis at
``REDIS_URL`` (``REDIS_CLUSTER=1`` for a cluster; ``--redis-url`` overrides), the same
store as the admin API (``/admin/keys``). Every gateway replica acts on a change within
a second. ``create`` prints the plain key once: it is stored only as a SHA-256 and
cannot be shown again.

Exit status: 0 done; 2 bad arguments, a value out of range, or an id that names no key
(the message says which); 1 Redis could not be reached or did not answer.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from gateway.accounts import codec
from gateway.accounts.errors import KeyNotFound
from gateway.accounts.model import PERIODS, ApiKey, Budget, Period
from gateway.accounts.store import KEEP, Keep, KeyStore
from gateway.errors import InvalidRequest, KeyStoreUnavailable
from gateway.jsonio import dumps
from gateway.redis_client import close_client, redis_client
from gateway.settings import SettingsError, settings_from_env
from hybrid_common.protocol import Tier

TIMEOUT_S: Final = 5.0
SHOWN_ONCE: Final = "This key is shown only now and cannot be shown again: store it safely."


class _Refused(Exception):
    """An error the command reports in one line, with exit status 2."""


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except (_Refused, InvalidRequest, KeyNotFound, SettingsError) as exc:
        print(f"error: {_message(exc)}", file=sys.stderr)
        return 2
    except KeyStoreUnavailable as exc:
        print(f"error: Redis could not be reached: {exc.message}", file=sys.stderr)
        return 1


def _message(exc: Exception) -> str:
    return exc.message if isinstance(exc, InvalidRequest | KeyNotFound) else str(exc)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway keys",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", help="the key store's Redis (default: REDIS_URL)")
    common.add_argument("--json", action="store_true", help="print JSON, as the admin API does")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    create = commands.add_parser("create", parents=[common], help="make a key (shown once)")
    create.add_argument("--name", required=True, help="what logs and metrics call the key")
    _limit_options(create, update=False)

    listing = commands.add_parser("list", parents=[common], help="list the keys")
    listing.add_argument("--all", action="store_true", help="revoked keys too")

    show = commands.add_parser("show", parents=[common], help="one key's record")
    show.add_argument("id", help="the key's id (key_...)")

    update = commands.add_parser(
        "update", parents=[common], help="change a key's name, metadata, limits or tiers"
    )
    update.add_argument("id", help="the key's id (key_...)")
    update.add_argument("--name", help="a new name")
    _limit_options(update, update=True)

    revoke = commands.add_parser("revoke", parents=[common], help="revoke a key, for good")
    revoke.add_argument("id", help="the key's id (key_...)")
    return parser


def _limit_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    rpm = parser.add_mutually_exclusive_group()
    rpm.add_argument("--rpm", type=_positive_int, help="requests per minute (all replicas)")
    tpm = parser.add_mutually_exclusive_group()
    tpm.add_argument("--tpm", type=_positive_int, help="prompt + completion tokens per minute")
    parser.add_argument("--budget-usd", type=_usd, help="spending allowed per period, in USD")
    parser.add_argument("--budget-period", choices=PERIODS, help="the budget's period (UTC)")
    soft = parser.add_mutually_exclusive_group()
    soft.add_argument(
        "--soft-budget-usd", type=_usd, help="past this, answers carry a warning header"
    )
    parser.add_argument(
        "--tiers", type=_tiers, help="the tiers the key may use: edge, cloud or edge,cloud"
    )
    meta = parser.add_mutually_exclusive_group()
    meta.add_argument(
        "--meta",
        action="append",
        type=_pair,
        metavar="KEY=VALUE",
        help="metadata (repeat for more)" + ("; replaces the key's metadata" if update else ""),
    )
    if update:
        rpm.add_argument("--no-rpm", action="store_true", help="no request limit")
        tpm.add_argument("--no-tpm", action="store_true", help="no token limit")
        soft.add_argument("--no-soft-budget", action="store_true", help="no soft limit")
        parser.add_argument("--no-budget", action="store_true", help="no budget")
        meta.add_argument("--no-meta", action="store_true", help="no metadata")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _usd(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of US dollars, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return value


def _tiers(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, got {text!r}")
    return key, value


async def _run(args: argparse.Namespace) -> int:
    url, cluster = args.redis_url, False
    if url is None:
        settings = settings_from_env()  # REDIS_URL and REDIS_CLUSTER, as the gateway reads them
        url, cluster = settings.redis_url, settings.redis_cluster
    if url is None:
        raise _Refused("the keys live in Redis: set REDIS_URL or --redis-url")
    client = redis_client(url, cluster=cluster, max_connections=4, timeout_s=TIMEOUT_S)
    try:
        store = KeyStore(client, timeout_s=TIMEOUT_S)
        if args.command == "create":
            await _create(store, args)
        elif args.command == "list":
            keys = await store.list(include_revoked=args.all)
            _print_list(keys, as_json=args.json)
        elif args.command == "show":
            _print_key(await store.get(args.id), as_json=args.json)
        elif args.command == "update":
            await _update(store, args)
        else:
            _print_key(await store.revoke(args.id), as_json=args.json)
            print(f"revoked {args.id}: every gateway refuses it within a second", file=sys.stderr)
    finally:
        await close_client(client)
    return 0


async def _create(store: KeyStore, args: argparse.Namespace) -> None:
    if args.budget_usd is None and (args.budget_period or args.soft_budget_usd is not None):
        raise _Refused("--budget-period and --soft-budget-usd need --budget-usd")
    budget = None
    if args.budget_usd is not None:
        if args.budget_period is None:
            raise _Refused("--budget-usd needs --budget-period (day or month)")
        budget = Budget(
            period=args.budget_period,
            limit_usd=args.budget_usd,
            soft_limit_usd=args.soft_budget_usd,
        )
    key, plain = await store.create(
        name=args.name,
        metadata=dict(args.meta or []),
        rpm=args.rpm,
        tpm=args.tpm,
        budget=budget,
        tiers=args.tiers,
    )
    if args.json:
        print(dumps(codec.created_view(key, plain)).decode())
    else:
        print(_describe(key))
        print(f"{'key':<10}{plain}")
    print(SHOWN_ONCE, file=sys.stderr)


async def _update(store: KeyStore, args: argparse.Namespace) -> None:
    budget: Budget | Keep | None = KEEP
    if args.no_budget:
        if args.budget_usd is not None or args.budget_period or args.soft_budget_usd is not None:
            raise _Refused("--no-budget goes with no other budget option")
        budget = None
    elif (
        args.budget_usd is not None
        or args.budget_period
        or args.soft_budget_usd is not None
        or args.no_soft_budget
    ):
        budget = _new_budget((await store.get(args.id)).budget, args)
    metadata: dict[str, str] | Keep | None = KEEP
    if args.no_meta:
        metadata = None
    elif args.meta is not None:
        metadata = dict(args.meta)
    rpm: int | Keep | None = None if args.no_rpm else KEEP if args.rpm is None else args.rpm
    tpm: int | Keep | None = None if args.no_tpm else KEEP if args.tpm is None else args.tpm
    tiers: list[Tier] | Keep = KEEP if args.tiers is None else args.tiers
    name: str | Keep = KEEP if args.name is None else args.name
    if all(v is KEEP for v in (budget, metadata, rpm, tpm, tiers, name)):
        raise _Refused("nothing to change: give at least one option (see keys update -h)")
    key = await store.update(
        args.id, name=name, metadata=metadata, rpm=rpm, tpm=tpm, budget=budget, tiers=tiers
    )
    _print_key(key, as_json=args.json)


def _new_budget(current: Budget | None, args: argparse.Namespace) -> Budget:
    """The key's budget with the options given changed."""
    if current is None:
        if args.budget_usd is None or args.budget_period is None:
            raise _Refused("the key has no budget yet: give --budget-usd and --budget-period")
        current = Budget(period=args.budget_period, limit_usd=args.budget_usd)
    period: Period = args.budget_period or current.period
    limit: float = args.budget_usd if args.budget_usd is not None else current.limit_usd
    soft = current.soft_limit_usd
    if args.no_soft_budget:
        soft = None
    elif args.soft_budget_usd is not None:
        soft = args.soft_budget_usd
    return Budget(period=period, limit_usd=limit, soft_limit_usd=soft)


def _print_key(key: ApiKey, *, as_json: bool) -> None:
    print(dumps(codec.key_view(key)).decode() if as_json else _describe(key))


def _print_list(keys: list[ApiKey], *, as_json: bool) -> None:
    if as_json:
        print(dumps(codec.list_view(keys)).decode())
        return
    if not keys:
        print("no keys", file=sys.stderr)
        return
    rows = [("ID", "NAME", "STATUS", "TIERS", "RPM", "TPM", "BUDGET")]
    rows += [
        (
            key.id,
            key.name,
            "revoked" if key.revoked else "active",
            ",".join(codec.key_view(key)["tiers"]),
            _number(key.rpm),
            _number(key.tpm),
            _budget(key.budget),
        )
        for key in keys
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _describe(key: ApiKey) -> str:
    view = codec.key_view(key)
    status = "active" if key.revoked_at is None else f"revoked {_time(key.revoked_at)}"
    metadata = ", ".join(f"{k}={v}" for k, v in sorted(key.metadata.items())) or "-"
    lines = [
        ("id", key.id),
        ("name", key.name),
        ("status", status),
        ("created", _time(key.created_at)),
        ("tiers", ",".join(view["tiers"])),
        ("rpm", _number(key.rpm)),
        ("tpm", _number(key.tpm)),
        ("budget", _budget(key.budget)),
        ("metadata", metadata),
    ]
    return "\n".join(f"{label:<10}{value}" for label, value in lines)


def _number(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def _budget(budget: Budget | None) -> str:
    if budget is None:
        return "none"
    text = f"${budget.limit_usd:,.2f}/{budget.period}"
    if budget.soft_limit_usd is not None:
        text += f" (warn at ${budget.soft_limit_usd:,.2f})"
    return text


def _time(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
