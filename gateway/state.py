"""Typed application state: everything a handler needs, under one ``web.AppKey``."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from gateway.metrics import GatewayMetrics
from gateway.routing.state import PolicyHolder
from gateway.sessions.service import SessionService
from gateway.settings import Settings
from gateway.telemetry import Tracing, disabled_tracing
from gateway.upstream.forward import Forwarder
from gateway.upstream.pool import NodePool


@dataclass(slots=True, kw_only=True)
class GatewayState:
    settings: Settings
    policies: PolicyHolder
    pool: NodePool
    metrics: GatewayMetrics
    forwarder: Forwarder
    session: aiohttp.ClientSession
    sessions: SessionService | None = None
    """Conversation history (set by the sessions cleanup context; disabled without REDIS_URL)."""
    tracing: Tracing = field(default_factory=disabled_tracing)


STATE: web.AppKey[GatewayState] = web.AppKey("gateway_state", GatewayState)
TRACING: web.AppKey[Tracing] = web.AppKey("gateway_tracing", Tracing)
"""Set first by the tracing cleanup context, flushed last at shutdown."""
