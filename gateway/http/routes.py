"""The small endpoints: models, liveness, readiness, metrics."""

from __future__ import annotations

from aiohttp import web

from gateway.http.admin_keys import add_admin_key_routes
from gateway.http.chat import chat_completions
from gateway.http.sessions_api import add_session_routes
from gateway.http.usage_api import add_usage_routes
from gateway.state import METRICS, POLICIES, POOL
from gateway.upstream.circuit import CircuitState
from hybrid_common.protocol import ModelCard, ModelList

_CIRCUIT_VALUE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


async def list_models(request: web.Request) -> web.Response:
    """``auto``, the two tier names, and every node's served model."""
    current = request.app[POLICIES].current
    policy, created = current.policy, int(current.loaded_at)
    names = ["auto", "edge", "cloud", *sorted(policy.served_models())]
    cards = [
        ModelCard(id=name, object="model", created=created, owned_by="hybrid-gateway")
        for name in dict.fromkeys(names)
    ]
    return web.json_response(ModelList(object="list", data=cards))


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: a policy is loaded and at least one node passed its health check."""
    pool, policies = request.app[POOL], request.app[POLICIES]
    tiers = {
        tier: [
            {"node": n.name, "healthy": n.healthy, "circuit": str(n.breaker.state)}
            for n in pool.nodes(tier)
        ]
        for tier in ("edge", "cloud")
    }
    ready = pool.ready()
    body = {
        "status": "ready" if ready else "not_ready",
        "policy": str(policies.path),
        "policy_error": policies.last_error,
        "tiers": tiers,
    }
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    for node in request.app[POOL].all_nodes():
        m.node_up.labels(node.tier, node.name).set(1 if node.healthy else 0)
        m.node_circuit.labels(node.tier, node.name).set(_CIRCUIT_VALUE[node.breaker.state])
        m.node_in_flight.labels(node.tier, node.name).set(node.in_flight)
    m.policy_info.set(request.app[POLICIES].current.loaded_at)
    return web.Response(
        body=m.render(),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    add_session_routes(app)
    add_admin_key_routes(app)
    add_usage_routes(app)
