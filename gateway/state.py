"""Typed application state: one ``web.AppKey`` per resource, as aiohttp recommends.

Each key is set once, by the cleanup context that owns the resource (see
:mod:`gateway.app`), before the app starts serving; nothing is patched afterwards.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from gateway.accounts.directory import KeyDirectory
from gateway.accounts.service import Accounting
from gateway.metrics import GatewayMetrics
from gateway.routing.state import PolicyHolder
from gateway.sessions.service import SessionService
from gateway.settings import Settings
from gateway.shadow.service import Shadowing
from gateway.telemetry import Tracing
from gateway.upstream.forward import Forwarder
from gateway.upstream.pool import NodePool

SETTINGS: web.AppKey[Settings] = web.AppKey("gateway_settings", Settings)
TRACING: web.AppKey[Tracing] = web.AppKey("gateway_tracing", Tracing)
"""Set first by the tracing cleanup context, flushed last at shutdown."""
METRICS: web.AppKey[GatewayMetrics] = web.AppKey("gateway_metrics", GatewayMetrics)
POLICIES: web.AppKey[PolicyHolder] = web.AppKey("gateway_policies", PolicyHolder)
"""The running policy and its reloads."""
POOL: web.AppKey[NodePool] = web.AppKey("gateway_pool", NodePool)
UPSTREAM_HTTP: web.AppKey[aiohttp.ClientSession] = web.AppKey(
    "gateway_upstream_http", aiohttp.ClientSession
)
"""The one connection pool to the nodes."""
FORWARDER: web.AppKey[Forwarder] = web.AppKey("gateway_forwarder", Forwarder)
SESSIONS: web.AppKey[SessionService] = web.AppKey("gateway_sessions", SessionService)
"""Conversation history (disabled, but present, without REDIS_URL)."""
SHADOW: web.AppKey[Shadowing] = web.AppKey("gateway_shadow", Shadowing)
"""Re-asking sampled edge answers on the cloud (idle, but present, without a policy section)."""
KEYS: web.AppKey[KeyDirectory] = web.AppKey("gateway_keys", KeyDirectory)
"""API keys kept in Redis (disabled, but present, without GATEWAY_KEY_STORE=redis)."""
ACCOUNTING: web.AppKey[Accounting] = web.AppKey("gateway_accounting", Accounting)
"""Per-key limits, budgets and the usage ledger (off, but present, without the key store)."""

__all__ = [
    "ACCOUNTING",
    "FORWARDER",
    "KEYS",
    "METRICS",
    "POLICIES",
    "POOL",
    "SESSIONS",
    "SETTINGS",
    "SHADOW",
    "TRACING",
    "UPSTREAM_HTTP",
]
