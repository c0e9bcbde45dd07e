"""Typed keys of the aiohttp application state (``web.AppKey``)."""

from __future__ import annotations

from aiohttp import web

from .metrics import EdgeMetrics
from .registry import ModelRegistry
from .settings import Settings
from .tracing import EdgeTracing

SETTINGS = web.AppKey("edge_settings", Settings)
MODELS = web.AppKey("edge_models", ModelRegistry)
METRICS = web.AppKey("edge_metrics", EdgeMetrics)
TRACING = web.AppKey("edge_tracing", EdgeTracing)
