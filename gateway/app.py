"""create_app(): middlewares, routes and one cleanup context per resource. Wiring only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from gateway.accounts.directory import KeyDirectory
from gateway.accounts.metrics import AccountMetrics
from gateway.accounts.service import Accounting
from gateway.accounts.store import KeyStore
from gateway.errors import KeyStoreUnavailable
from gateway.http.middlewares import api_key_auth, observe_requests, request_id_and_errors
from gateway.http.routes import add_routes
from gateway.metrics import GatewayMetrics
from gateway.policy.model import HealthSpec
from gateway.redis_client import close_client, redis_client
from gateway.routing.state import PolicyHolder, RoutingState, load_routing_state
from gateway.sessions.service import SessionService
from gateway.sessions.store import SessionStore
from gateway.settings import Settings
from gateway.shadow.metrics import ShadowMetrics
from gateway.shadow.service import Shadowing
from gateway.state import (
    ACCOUNTING,
    FORWARDER,
    KEYS,
    METRICS,
    POLICIES,
    POOL,
    SESSIONS,
    SETTINGS,
    SHADOW,
    TRACING,
    UPSTREAM_HTTP,
)
from gateway.telemetry import Tracing, build_tracing
from gateway.tokens import encoding
from gateway.upstream.forward import Forwarder
from gateway.upstream.health import run_health_checks
from gateway.upstream.http1 import Connections
from gateway.upstream.load import run_load_polling
from gateway.upstream.pool import NodePool

log = logging.getLogger("gateway")

MAX_UPSTREAM_CONNECTIONS = 512
"""Bound on the connections open to the nodes for chat calls; each node's own limit is
its max_concurrency."""
PROBE_CONNECTIONS = 128
"""Bound on the health and load probes' connections: each round probes every node at once,
a health check and a load poll each (64 nodes before one waits for another)."""
KEY_STORE_CONNECTIONS = 32
"""Bound on the key store's pool: a key is read at most once per 0.5 s per replica."""
KEY_STORE_SOCKET_TIMEOUT_S = 5.0
"""Backstop only: each key store call has its own, shorter deadline."""


async def create_app(
    settings: Settings, *, health_checks: bool = True, tracing: Tracing | None = None
) -> web.Application:
    """Build the app. Loads the policy now, so a broken file fails start-up, not a request.

    ``tracing`` replaces the tracer that ``settings.tracing`` describes (tests pass one over
    an in-memory exporter); the caller owns it, and the app only flushes it at shutdown.
    """
    initial = await asyncio.to_thread(
        load_routing_state, settings.policy_path, settings.node_overrides()
    )
    await asyncio.to_thread(encoding)  # tokenizer load (~0.3 s) off the request path
    app = web.Application(middlewares=[observe_requests, request_id_and_errors, api_key_auth])
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_tracing(settings, tracing))  # first in, so flushed last
    app.cleanup_ctx.append(_upstreams(settings, initial))
    app.cleanup_ctx.append(_sessions)
    app.cleanup_ctx.append(_keys)
    app.cleanup_ctx.append(_accounting)
    app.cleanup_ctx.append(_shadowing)  # closed before the connections it uses
    app.cleanup_ctx.append(_policy_reloads)
    if health_checks:
        app.cleanup_ctx.append(_health_checks)
    add_routes(app)
    return app


def _tracing(settings: Settings, injected: Tracing | None):  # type: ignore[no-untyped-def]
    async def context(app: web.Application) -> AsyncIterator[None]:
        tracing = injected if injected is not None else build_tracing(settings.tracing)
        app[TRACING] = tracing
        yield
        # Blocking (the exporter's last POST, bounded by its timeout): off the event loop.
        if injected is None:
            await asyncio.to_thread(tracing.shutdown)
        else:
            await asyncio.to_thread(tracing.force_flush)

    return context


def _upstreams(settings: Settings, initial: RoutingState):  # type: ignore[no-untyped-def]
    """The policy, the node pool, the metrics and the connections to the nodes."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        metrics = GatewayMetrics()
        pool = NodePool(initial.policy)
        # The chat calls: the gateway's own lean client (gateway/upstream/http1).
        connections = Connections(
            asyncio.get_running_loop(), limit=MAX_UPSTREAM_CONNECTIONS, keepalive_s=30
        )
        # Health and load probes: a few requests a second at most, through aiohttp.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=PROBE_CONNECTIONS, keepalive_timeout=30),
            # A cookie one node set (a load balancer's affinity cookie) is not sent back.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        app[METRICS] = metrics
        app[POOL] = pool
        app[UPSTREAM_HTTP] = session
        app[POLICIES] = PolicyHolder(
            settings.policy_path,
            initial,
            overrides=settings.node_overrides(),
            on_change=lambda state: _adopt(pool, metrics, state),
            on_result=lambda ok: metrics.policy_reloads.labels(
                "success" if ok else "failure"
            ).inc(),
        )
        app[FORWARDER] = Forwarder(pool, connections, metrics, tracing=app[TRACING])
        yield
        await session.close()
        await connections.close()

    return context


def _adopt(pool: NodePool, metrics: GatewayMetrics, state: RoutingState) -> None:
    """A reloaded policy's nodes replace the old ones, in the pool and in the metrics."""
    pool.sync(state.policy)
    metrics.retain_nodes((n.tier, n.name) for n in pool.all_nodes())


async def _sessions(app: web.Application) -> AsyncIterator[None]:
    """Session history in Redis and the spool replayer; without REDIS_URL, sessions are off."""
    settings, policies = app[SETTINGS], app[POLICIES]
    url = settings.redis_url
    store = SessionStore.from_url(url, cluster=settings.redis_cluster) if url else None
    service = SessionService(
        store=store,
        spec=lambda: policies.current.policy.sessions,
        metrics=app[METRICS],
        tracing=app[TRACING],
    )
    await service.start()  # Redis down at start-up is not fatal: the replayer keeps trying
    app[SESSIONS] = service
    replay = asyncio.create_task(service.run_replay())
    yield
    replay.cancel()
    await asyncio.gather(replay, return_exceptions=True)
    await service.aclose()


async def _keys(app: web.Application) -> AsyncIterator[None]:
    """API keys in Redis (GATEWAY_KEY_STORE=redis); otherwise a directory that knows none.

    Redis down at start-up is not fatal: requests with a stored key get 503 until it is back.
    """
    settings = app[SETTINGS]
    if not settings.key_store:
        app[KEYS] = KeyDirectory(None)
        yield
        return
    if settings.redis_url is None:
        raise ValueError("GATEWAY_KEY_STORE=redis needs REDIS_URL")
    client = redis_client(
        settings.redis_url,
        cluster=settings.redis_cluster,
        max_connections=KEY_STORE_CONNECTIONS,
        timeout_s=KEY_STORE_SOCKET_TIMEOUT_S,
    )
    store = KeyStore(client)
    try:
        await store.ping()
    except KeyStoreUnavailable as exc:
        log.warning("the key store is not reachable at start-up: %s", exc.message)
    directory = KeyDirectory(store)
    app[KEYS] = directory
    yield
    await directory.aclose()
    await close_client(client)


async def _accounting(app: web.Application) -> AsyncIterator[None]:
    """Per-key limits and budgets, and the usage ledger, with the key store (in its Redis);
    otherwise off. Closed after the last request: the ledger writes what is queued."""
    settings = app[SETTINGS]
    if not settings.key_store or settings.redis_url is None:
        app[ACCOUNTING] = Accounting.off()
        yield
        return
    accounting = Accounting.connect(
        settings.redis_url,
        cluster=settings.redis_cluster,
        metrics=AccountMetrics(app[METRICS].registry),
    )
    accounting.start()  # Redis down at start-up is not fatal: the ledger keeps its queue
    app[ACCOUNTING] = accounting
    yield
    await accounting.aclose()


async def _shadowing(app: web.Application) -> AsyncIterator[None]:
    """Shadow calls and their store (docs/shadow.md); idle unless the policy opts in."""
    settings = app[SETTINGS]
    shadowing = Shadowing(
        app[FORWARDER],
        ShadowMetrics(app[METRICS].registry),
        redis_url=settings.redis_url,
        redis_cluster=settings.redis_cluster,
    )
    shadowing.start(app[POLICIES].current.policy)
    app[SHADOW] = shadowing
    yield
    await shadowing.aclose()  # shadow calls under way are cancelled: they are samples


async def _policy_reloads(app: web.Application) -> AsyncIterator[None]:
    """Reload on file change (polling the mtime) and on SIGHUP.

    Both survive every reload failure themselves (``PolicyHolder``); a task that still ends
    with an exception is logged with its traceback, never a silently dead watcher.
    """
    policies = app[POLICIES]
    watcher = asyncio.create_task(policies.watch(app[SETTINGS].policy_poll_s))
    watcher.add_done_callback(_log_if_failed)
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:
        task = asyncio.create_task(policies.reload())
        pending.add(task)
        task.add_done_callback(pending.discard)
        task.add_done_callback(_log_if_failed)

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    yield
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.remove_signal_handler(signal.SIGHUP)
    watcher.cancel()
    for task in pending:
        task.cancel()
    await asyncio.gather(watcher, *pending, return_exceptions=True)


def _log_if_failed(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("policy reload task ended: %r", exc, exc_info=exc)


async def _health_checks(app: web.Application) -> AsyncIterator[None]:
    policies, session, pool = app[POLICIES], app[UPSTREAM_HTTP], app[POOL]

    def health() -> HealthSpec:
        return policies.current.policy.health

    tasks = [
        asyncio.create_task(run_health_checks(session, pool, health)),
        asyncio.create_task(
            run_load_polling(
                session,
                pool,
                lambda: health().load_interval_s,
                lambda: health().timeout_s,
            )
        ),
    ]
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
