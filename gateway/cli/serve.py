"""``python -m gateway serve``: run the gateway until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from gateway.app import MAX_UPSTREAM_CONNECTIONS, PROBE_CONNECTIONS, create_app
from gateway.collector import tune_collector
from gateway.event_loop import EventLoopUnavailable, choose_event_loop
from gateway.http.connections import GuardedRunner
from gateway.logs import configure_logging
from gateway.policy.errors import PolicyError
from gateway.settings import Settings, SettingsError, settings_from_env
from hybrid_common.otel import Exporter

log = logging.getLogger("gateway")


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway serve", description=__doc__)
    parser.add_argument("--host", help="listen address (GATEWAY_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (GATEWAY_PORT, default 8080)")
    parser.add_argument("--policy", help="policy YAML (GATEWAY_POLICY)")
    parser.add_argument(
        "--console-trace",
        action="store_true",
        help="print each request's trace to stderr as a tree, one line per span "
        "(adds OTEL_TRACES_EXPORTER=console-tree to the exporters configured)",
    )
    args = parser.parse_args(argv)
    try:
        settings = settings_from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from dataclasses import replace
    from pathlib import Path

    if args.host:
        settings = replace(settings, host=args.host)
    if args.port is not None:
        settings = replace(settings, port=args.port)
    if args.policy:
        settings = replace(settings, policy_path=Path(args.policy))
    if args.console_trace:
        tree: frozenset[Exporter] = frozenset({"console-tree"})
        exporters = settings.tracing.exporters | tree
        settings = replace(settings, tracing=replace(settings.tracing, exporters=exporters))
    try:
        loop = choose_event_loop(settings.event_loop)
    except EventLoopUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # GATEWAY_LOG_FORMAT: JSON lines (request_id, trace_id on each) by default, or text.
    configure_logging(settings.log_level, settings.log_format)
    tune_collector()  # a request's short-lived objects must not set off collections
    try:
        with asyncio.Runner(loop_factory=loop.factory) as runner:
            runner.run(_serve(settings, loop.name))
    except PolicyError as exc:
        print(f"error: invalid policy: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(settings, loop_name: str) -> None:  # type: ignore[no-untyped-def]
    app = await create_app(settings)
    runner, _ = await start_server(app, settings)
    log.info(
        "gateway listening on http://%s:%d (policy %s, event loop %s)",
        settings.host,
        settings.port,
        settings.policy_path,
        loop_name,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("gateway shutting down")
        await runner.cleanup()


async def start_server(
    app: web.Application, settings: Settings
) -> tuple[GuardedRunner, web.TCPSite]:
    """Listen on ``settings.host``/``port`` (0: any free port, see ``site.port``) as ``serve`` does.

    The caller stops it with ``runner.cleanup()``.
    """
    # handler_cancellation: a client that disconnects cancels its handler and so its upstream call.
    # GatewayRunner (under GuardedRunner): aiohttp's own error answers (malformed requests) are
    # OpenAI-style JSON too. GuardedRunner: header, idle and body deadlines, a connection cap.
    runner = GuardedRunner(
        app, limits=settings.connections, handler_cancellation=True, access_log=None
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    _warn_if_few_file_descriptors(settings.connections.max_connections)
    return runner, site


def _warn_if_few_file_descriptors(max_connections: int) -> None:
    """Each client connection and each upstream connection is a file descriptor."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    upstream = MAX_UPSTREAM_CONNECTIONS + PROBE_CONNECTIONS
    needed = max_connections + upstream + 64  # + Redis, logs, policy reads
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the open-file limit (%d) is below GATEWAY_MAX_CONNECTIONS + %d upstream "
            "connections + 64: raise it (ulimit -n %d) or lower GATEWAY_MAX_CONNECTIONS",
            soft,
            upstream,
            needed,
        )
