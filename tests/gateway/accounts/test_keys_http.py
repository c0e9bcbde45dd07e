"""Stored keys over HTTP: the admin API (each route, its guard, its 400s, 404s and 409),
client requests with created, unknown and revoked keys, GATEWAY_API_KEYS alongside, and
Redis down (503, never a 500)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import TwoTiers, TwoTiersFactory
from tests.fixtures.redis import RedisServer
from tests.helpers import HI, HasUrl, scrape_metrics, sdk

ADMIN = "admin-sekrit"
STATIC = "static-sekrit"

Call = Callable[..., Awaitable[tuple[int, Any]]]


async def call(
    target: HasUrl,
    method: str,
    path: str,
    *,
    token: str | None = ADMIN,
    body: object = None,
    data: bytes | None = None,
) -> tuple[int, Any]:
    """One admin request: (status, parsed JSON body)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, target.url + path, headers=headers, json=body, data=data) as response,
    ):
        assert response.content_type == "application/json", await response.text()
        return response.status, await response.json()


@pytest.fixture
def keyed(
    two_tiers: TwoTiersFactory, redis_server: RedisServer
) -> Callable[..., Awaitable[TwoTiers]]:
    """A two-tier gateway with GATEWAY_KEY_STORE=redis and an admin key (settings override)."""

    async def start(**settings: object) -> TwoTiers:
        merged = {
            "redis_url": redis_server.url,
            "key_store": True,
            "admin_key": ADMIN,
            **settings,
        }
        return await two_tiers(settings=merged)

    return start


async def ask(target: HasUrl, key: str) -> str:
    async with sdk(target, api_key=key) as client:
        done = await client.chat.completions.create(model="auto", messages=HI)
    return done.choices[0].message.content or ""


async def test_admin_api_round_trip(keyed: Callable[..., Awaitable[TwoTiers]]) -> None:
    gateway = (await keyed()).gateway
    status, created = await call(
        gateway,
        "POST",
        "/admin/keys",
        body={
            "name": "free plan",
            "metadata": {"tenant": "acme"},
            "rpm": 60,
            "budget": {"period": "month", "limit_usd": 5, "soft_limit_usd": 4},
            "tiers": ["edge"],
        },
    )
    assert status == 201, created
    plain = created.pop("key")
    assert plain.startswith("sk-gw-")
    key_id = created["id"]
    assert created == {
        "object": "api_key",
        "id": key_id,
        "name": "free plan",
        "metadata": {"tenant": "acme"},
        "rpm": 60,
        "tpm": None,
        "budget": {"period": "month", "limit_usd": 5.0, "soft_limit_usd": 4.0},
        "tiers": ["edge"],
        "created_at": created["created_at"],
        "revoked_at": None,
    }
    status, shown = await call(gateway, "GET", f"/admin/keys/{key_id}")
    assert (status, shown) == (200, created)  # the plain key is not shown again
    status, listed = await call(gateway, "GET", "/admin/keys")
    assert (status, listed) == (200, {"object": "list", "data": [created]})
    status, changed = await call(
        gateway, "PATCH", f"/admin/keys/{key_id}", body={"rpm": None, "tpm": 1000, "name": "b"}
    )
    assert status == 200
    assert (changed["rpm"], changed["tpm"], changed["name"]) == (None, 1000, "b")
    assert changed["budget"] == created["budget"]  # not sent: kept
    status, changed = await call(
        gateway, "PATCH", f"/admin/keys/{key_id}", body={"budget": None, "metadata": None}
    )
    assert (changed["budget"], changed["metadata"]) == (None, {})
    status, revoked = await call(gateway, "DELETE", f"/admin/keys/{key_id}")
    assert status == 200 and isinstance(revoked["revoked_at"], int)
    assert (await call(gateway, "GET", "/admin/keys"))[1]["data"] == []
    status, everything = await call(gateway, "GET", "/admin/keys?include_revoked=true")
    assert [k["id"] for k in everything["data"]] == [key_id]


async def test_created_keys_serve_and_revoked_or_unknown_ones_get_401(
    keyed: Callable[..., Awaitable[TwoTiers]],
) -> None:
    gateway = (await keyed()).gateway
    _, created = await call(gateway, "POST", "/admin/keys", body={"name": "app"})
    plain = created["key"]
    assert await ask(gateway, plain)
    for wrong in ("sk-gw-" + "A" * 43, "nonsense"):
        with pytest.raises(openai.AuthenticationError) as info:
            await ask(gateway, wrong)
        assert info.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + "/v1/chat/completions", json={}) as response:
            assert response.status == 401  # no Authorization at all
        async with http.get(gateway.url + "/healthz") as response:
            assert response.status == 200  # probes need no key
    await call(gateway, "DELETE", f"/admin/keys/{created['id']}")
    with pytest.raises(openai.AuthenticationError) as info:
        await ask(gateway, plain)  # on this replica at once: the admin API forgot its copy
    assert info.value.body["code"] == "invalid_api_key"  # type: ignore[index]


async def test_static_keys_keep_working_alongside(
    keyed: Callable[..., Awaitable[TwoTiers]],
) -> None:
    gateway = (await keyed(api_keys=frozenset({STATIC}))).gateway
    _, created = await call(gateway, "POST", "/admin/keys", body={"name": "stored"})
    assert await ask(gateway, STATIC)
    assert await ask(gateway, created["key"])
    with pytest.raises(openai.AuthenticationError):
        await ask(gateway, "static-sekri")
    with pytest.raises(openai.AuthenticationError):
        await ask(gateway, ADMIN)  # the admin key is no client key


async def test_static_keys_alone_work_as_before(two_tiers: TwoTiersFactory) -> None:
    gateway = (await two_tiers(settings={"api_keys": frozenset({STATIC})})).gateway
    assert await ask(gateway, STATIC)
    with pytest.raises(openai.AuthenticationError):
        await ask(gateway, "sk-gw-" + "A" * 43)


async def test_the_admin_api_needs_the_admin_key(
    keyed: Callable[..., Awaitable[TwoTiers]],
) -> None:
    gateway = (await keyed(api_keys=frozenset({STATIC}))).gateway
    _, created = await call(gateway, "POST", "/admin/keys", body={"name": "c"})
    one = f"/admin/keys/{created['id']}"
    routes = [("POST", "/admin/keys"), ("GET", "/admin/keys"), ("GET", one)]
    routes += [("PATCH", one), ("DELETE", one)]
    for method, path in routes:
        for token in (None, "wrong", STATIC, created["key"]):
            status, body = await call(gateway, method, path, token=token, body={"name": "x"})
            assert (status, body["error"]["code"]) == (401, "invalid_api_key"), (method, token)
    assert (await call(gateway, "GET", one))[1]["revoked_at"] is None  # nothing happened


async def test_without_an_admin_key_the_admin_api_is_off(
    keyed: Callable[..., Awaitable[TwoTiers]],
) -> None:
    gateway = (await keyed(admin_key=None)).gateway
    status, body = await call(gateway, "GET", "/admin/keys")
    assert (status, body["error"]["code"]) == (403, "permission_denied")
    assert "GATEWAY_ADMIN_KEY" in body["error"]["message"]


async def test_without_the_key_store_the_admin_api_says_what_to_set(
    two_tiers: TwoTiersFactory,
) -> None:
    # Client keys are required (GATEWAY_API_KEYS), yet /admin is guarded by the admin key only.
    gateway = (
        await two_tiers(settings={"admin_key": ADMIN, "api_keys": frozenset({STATIC})})
    ).gateway
    for method, path in [("GET", "/admin/keys"), ("POST", "/admin/keys")]:
        status, body = await call(gateway, method, path, body={"name": "x"})
        assert (status, body["error"]["code"]) == (409, "key_store_disabled")
        assert "GATEWAY_KEY_STORE=redis" in body["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [
        ("POST", "/admin/keys", {}, 400, "name"),
        ("POST", "/admin/keys", {"name": ""}, 400, "name"),
        ("POST", "/admin/keys", {"name": "x", "rpm": 0}, 400, "rpm"),
        ("POST", "/admin/keys", {"name": "x", "tpm": "100"}, 400, "tpm"),
        ("POST", "/admin/keys", {"name": "x", "colour": "red"}, 400, "colour"),
        ("POST", "/admin/keys", {"name": "x", "tiers": ["gpu"]}, 400, "tiers"),
        ("POST", "/admin/keys", {"name": "x", "tiers": []}, 400, "tiers"),
        ("POST", "/admin/keys", {"name": "x", "metadata": ["a"]}, 400, "metadata"),
        ("POST", "/admin/keys", {"name": "x", "budget": 5}, 400, "budget"),
        (
            "POST",
            "/admin/keys",
            {"name": "x", "budget": {"period": "day", "limit_usd": 5, "soft_limit_usd": 6}},
            400,
            "budget.soft_limit_usd",
        ),
        (
            "POST",
            "/admin/keys",
            {"name": "x", "budget": {"period": "day", "limit_usd": -1}},
            400,
            "budget.limit_usd",
        ),
        ("POST", "/admin/keys", [1], 400, None),
        ("PATCH", "/admin/keys/{id}", {"tiers": None}, 400, "tiers"),
        ("PATCH", "/admin/keys/{id}", {"name": None}, 400, "name"),
        ("PATCH", "/admin/keys/{id}", {"budget": {"period": "day"}}, 400, "budget.limit_usd"),
        ("PATCH", "/admin/keys/{id}", {"id": "key_000000000000"}, 400, "id"),
        ("GET", "/admin/keys?include_revoked=maybe", None, 400, "include_revoked"),
        ("GET", "/admin/keys/nope", None, 400, "key_id"),
        ("PATCH", "/admin/keys/key_{x}", {"rpm": 1}, 400, "key_id"),
        ("GET", "/admin/keys/key_000000000000", None, 404, "key_id"),
        ("PATCH", "/admin/keys/key_000000000000", {"rpm": 1}, 404, "key_id"),
        ("DELETE", "/admin/keys/key_000000000000", None, 404, "key_id"),
    ],
)
async def test_bad_admin_requests_name_the_param(
    keyed: Callable[..., Awaitable[TwoTiers]],
    method: str,
    path: str,
    body: object,
    status: int,
    param: str | None,
) -> None:
    gateway = (await keyed()).gateway
    _, created = await call(gateway, "POST", "/admin/keys", body={"name": "existing"})
    got, answer = await call(gateway, method, path.replace("{id}", created["id"]), body=body)
    assert (got, answer["error"]["param"]) == (status, param), answer
    expected = "key_not_found" if status == 404 else "invalid_request"
    assert answer["error"]["code"] == expected
    _, shown = await call(gateway, "GET", f"/admin/keys/{created['id']}")
    assert shown["name"] == "existing" and shown["rpm"] is None  # unchanged


async def test_a_body_that_is_not_json_is_400(keyed: Callable[..., Awaitable[TwoTiers]]) -> None:
    gateway = (await keyed()).gateway
    status, body = await call(gateway, "POST", "/admin/keys", data=b"{name: x")
    assert (status, body["error"]["code"]) == (400, "invalid_json")


async def test_redis_down_is_503_never_500(
    keyed: Callable[..., Awaitable[TwoTiers]], redis_server: RedisServer
) -> None:
    gateway = (await keyed()).gateway
    _, created = await call(gateway, "POST", "/admin/keys", body={"name": "x"})
    redis_server.stop()
    for never_seen in ("sk-gw-" + "B" * 43, created["key"]):  # no copy to stand in
        with pytest.raises(openai.APIStatusError) as info:
            await ask(gateway, never_seen)
        assert info.value.status_code == 503
        assert info.value.body["code"] == "key_store_unavailable"  # type: ignore[index]
        assert info.value.response.headers["Retry-After"] == "1"
    for method, path in [("GET", "/admin/keys"), ("DELETE", f"/admin/keys/{created['id']}")]:
        status, body = await call(gateway, method, path)
        assert (status, body["error"]["code"]) == (503, "key_store_unavailable")


async def test_keys_never_reach_logs_or_metrics(
    keyed: Callable[..., Awaitable[TwoTiers]], caplog: pytest.LogCaptureFixture
) -> None:
    gateway = (await keyed()).gateway
    caplog.set_level(logging.DEBUG)
    _, created = await call(gateway, "POST", "/admin/keys", body={"name": "quiet"})
    plain = created["key"]
    await ask(gateway, plain)
    await call(gateway, "DELETE", f"/admin/keys/{created['id']}")
    with pytest.raises(openai.AuthenticationError):
        await ask(gateway, plain)
    assert caplog.records, "nothing was logged"
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert plain not in logged and plain[6:] not in logged
    metrics = await scrape_metrics(gateway)
    assert not [v for v in metrics.label_values() if plain[6:] in v]
