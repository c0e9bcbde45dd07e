"""create_app(): the edge node's aiohttp application. Wiring only."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from . import handlers
from .engine import FailureHandler
from .errors import EdgeError, MethodNotAllowed, PayloadTooLarge, RouteNotFound
from .keys import METRICS, MODELS, SETTINGS, TRACING
from .metrics import EdgeMetrics
from .model import ModelLoader, load_model
from .registry import ModelRegistry
from .settings import Settings
from .tracing import EdgeTracing, build_tracing

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(
    settings: Settings,
    *,
    loader: ModelLoader = load_model,
    tracing: EdgeTracing | None = None,
    on_failure: FailureHandler | None = None,
) -> web.Application:
    """The application; the model starts loading in a thread when the app starts up
    (its ``--variant`` siblings load on demand: :mod:`edge_node.registry`).

    ``tracing`` replaces the tracer ``settings.tracing`` describes (tests pass one over an
    in-memory exporter); the caller owns it, and the app only flushes it at shutdown.
    ``on_failure`` runs on the event loop when the model fails to load or its start-up
    self-check fails (the server process uses it to exit); without it the app stays up
    and ``/health`` answers 503 with the reason.
    """
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[error_middleware])
    metrics = EdgeMetrics()
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[MODELS] = ModelRegistry(settings, metrics, loader, on_failure=on_failure)
    app.cleanup_ctx.append(_tracing_ctx(settings, tracing))  # first in, so flushed last
    app.cleanup_ctx.append(_models_ctx)
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
    app.router.add_get("/v1/models", handlers.models)
    app.router.add_get("/health", handlers.health)
    app.router.add_get("/metrics", handlers.metrics)
    return app


def _tracing_ctx(
    settings: Settings, injected: EdgeTracing | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        tracing = injected if injected is not None else build_tracing(settings.tracing)
        app[TRACING] = tracing
        yield
        # Blocking (the exporter's last POST, bounded by its timeout): off the event loop.
        await asyncio.to_thread(tracing.shutdown if injected is None else tracing.force_flush)

    return context


async def _models_ctx(app: web.Application) -> AsyncIterator[None]:
    models = app[MODELS]
    models.start()  # returns at once: /health answers 503 until the model is loaded
    yield
    await models.aclose()


def _error_response(error: EdgeError, status: int | None = None) -> web.Response:
    return web.json_response(error.body(), status=status or error.status, headers=error.headers())


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every error as an OpenAI-style JSON body; never a traceback."""
    try:
        return await handler(request)
    except EdgeError as exc:
        return _error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            return _error_response(RouteNotFound(f"No route for {request.method} {request.path}."))
        if exc.status == 405:
            return _error_response(
                MethodNotAllowed(f"{request.method} is not allowed on {request.path}.")
            )
        if exc.status == 413:
            return _error_response(PayloadTooLarge("The request body is too large."))
        return _error_response(EdgeError(exc.reason), status=exc.status)
    except asyncio.CancelledError:
        raise
    except Exception:  # the outermost boundary: log it, answer a clean 500
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response(EdgeError("Internal error in the edge node."))
