"""Typed keys of the aiohttp application state (``web.AppKey``)."""

from __future__ import annotations

from aiohttp import web

from .engine import Engine
from .metrics import EdgeMetrics
from .settings import Settings
from .tracing import EdgeTracing

SETTINGS = web.AppKey("edge_settings", Settings)
ENGINE = web.AppKey("edge_engine", Engine)
METRICS = web.AppKey("edge_metrics", EdgeMetrics)
TRACING = web.AppKey("edge_tracing", EdgeTracing)
