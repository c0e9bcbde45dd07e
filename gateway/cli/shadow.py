"""``python -m gateway shadow export --policy FILE [--out FILE]``: shadow records to label.

Reads the store the policy's ``shadow`` section names (a Redis stream on ``--redis-url``
or ``REDIS_URL``; or its JSONL directory) and writes one JSON line per record, oldest
first: ``{"messages", "edge_ok": null, "cloud_ok": null, "edge", "cloud", "route", "id",
...}`` (:mod:`gateway.shadow.export`). Label each ``null`` ``true`` or ``false``, then
``python -m gateway train --data FILE``. Records are left in the store.

Exit status: 0 written (the count on stderr); 2 bad arguments, a policy that cannot be
read or has no ``shadow`` section, a store that cannot be read, or a stored line that is
not a record (named by file and line, or stream key and entry id; ``--skip-bad`` passes
over such lines instead). On any error nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from gateway.policy.errors import PolicyError
from gateway.policy.parse import load_policy
from gateway.policy.shadow import JsonlStoreSpec, ShadowStoreSpec
from gateway.settings import SettingsError, settings_from_env
from gateway.shadow.export import BadRecord, ExportCount, export
from gateway.shadow.jsonl_store import JsonlShadowStore
from gateway.shadow.redis_store import RedisShadowStore, close_client, redis_client
from gateway.shadow.store import ShadowStoreError


class _Refused(Exception):
    """An error the command reports in one line, with exit status 2."""


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway shadow",
        description="Shadow records (policy section shadow): export them to label.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ex = commands.add_parser(
        "export",
        help="write the stored records as JSONL lines to label for `train`",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("--policy", type=Path, required=True, help="the policy YAML the gateway runs")
    ex.add_argument("--out", type=Path, help="output file (default: standard output)")
    ex.add_argument("--redis-url", help="Redis of a redis store (default: REDIS_URL)")
    ex.add_argument(
        "--skip-bad", action="store_true", help="pass over stored lines that are not records"
    )
    args = parser.parse_args(argv)
    try:
        count = asyncio.run(_export(args))
    except (_Refused, PolicyError, BadRecord, ShadowStoreError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    skipped = f" ({count.bad} bad line(s) passed over)" if count.bad else ""
    where = args.out if args.out is not None else "standard output"
    print(f"exported {count.exported} record(s) to {where}{skipped}", file=sys.stderr)
    return 0


async def _export(args: argparse.Namespace) -> ExportCount:
    policy = await asyncio.to_thread(load_policy, args.policy)
    if policy.shadow is None:
        raise _Refused(f"{args.policy} has no shadow section: it collects no records")
    if args.out is not None and not args.out.parent.is_dir():
        raise _Refused(f"--out: directory {args.out.parent} does not exist")
    spec = policy.shadow.store
    # Written to a temporary file first: on any error, nothing reaches the output.
    with tempfile.TemporaryFile("w+", encoding="utf-8") as staged:
        count = await _read_store(spec, args.redis_url, staged, skip_bad=args.skip_bad)
        staged.seek(0)
        if args.out is None:
            shutil.copyfileobj(staged, sys.stdout)
            sys.stdout.flush()
        else:
            _replace(args.out, staged)
    return count


async def _read_store(
    spec: ShadowStoreSpec, redis_url: str | None, out: IO[str], *, skip_bad: bool
) -> ExportCount:
    if isinstance(spec, JsonlStoreSpec):
        if not spec.dir.is_dir():
            raise _Refused(f"shadow.store.dir {spec.dir} does not exist: nothing stored yet?")
        return await export(JsonlShadowStore(spec).read(), out, skip_bad=skip_bad)
    cluster = False
    if redis_url is None:
        settings = settings_from_env()  # REDIS_URL and REDIS_CLUSTER, as the gateway reads them
        redis_url, cluster = settings.redis_url, settings.redis_cluster
    if redis_url is None:
        raise _Refused("the shadow store is redis: set --redis-url or REDIS_URL")
    client = redis_client(redis_url, cluster=cluster)
    try:
        return await export(RedisShadowStore(client, spec).read(), out, skip_bad=skip_bad)
    finally:
        await close_client(client)


def _replace(path: Path, staged: IO[str]) -> None:
    """Write ``path`` whole or not at all (a temporary file beside it, then a rename)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            shutil.copyfileobj(staged, file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
