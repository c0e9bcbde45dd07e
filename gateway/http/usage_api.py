"""``GET /v1/usage``: requests, tokens, cost and what routing saved, per key and tier.

Admin only (``Authorization: Bearer $GATEWAY_ADMIN_KEY``, :func:`require_admin`): it
shows every key's spending. Query parameters:

- ``key_id``: one key (``key_...``, or ``_static`` / ``_anonymous`` for traffic without
  a stored key); absent, every key with usage in the range.
- ``period=day|month``: today or this month up to today (UTC); or
- ``start`` / ``end``: ISO dates, inclusive, UTC, at most 400 days; ``end`` defaults to
  today and ``start`` to ``end`` (neither given: today).

The body is :meth:`~gateway.accounts.usage.UsageReport.to_json` (docs/keys-and-budgets.md,
"Usage and savings"). Bad parameters answer 400 naming the parameter. A gateway without
``GATEWAY_KEY_STORE=redis`` keeps no ledger: 409 ``key_store_disabled``, not 503, since
nothing is down and asking again will not help until an operator turns the store on (a
503 would read as an outage to clients, monitors and load balancers). Redis not
answering: 503 ``usage_store_unavailable`` with Retry-After.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from gateway.accounts.usage import check_key_id, report_range, usage_report
from gateway.errors import InvalidRequest
from gateway.http.admin_auth import require_admin, require_store

_PARAMS = frozenset({"key_id", "period", "start", "end"})


async def get_usage(request: web.Request) -> web.Response:
    require_admin(request)
    query = request.rel_url.query
    for name in query:
        if name not in _PARAMS:
            raise InvalidRequest(
                f"Unknown query parameter {name[:40]!r}; use key_id, period, start, end.",
                param=name[:40],
            )
        if len(query.getall(name)) > 1:
            raise InvalidRequest(f"{name} is given more than once.", param=name)
    start, end = report_range(
        period=query.get("period"),
        start=query.get("start"),
        end=query.get("end"),
        today=datetime.now(UTC).date(),
    )
    key_id = query.get("key_id")
    if key_id is not None:
        check_key_id(key_id)
    store, _ = require_store(request, keeps="usage ledger")  # the ledger is in its Redis
    report = await usage_report(store.redis, key_id=key_id, start=start, end=end)
    return web.json_response(report.to_json())


def add_usage_routes(app: web.Application) -> None:
    app.router.add_get("/v1/usage", get_usage)


__all__ = ["add_usage_routes", "get_usage"]
