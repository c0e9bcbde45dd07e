"""Bad input gets an OpenAI-style 4xx naming the problem; never a 500 or a traceback."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.conftest import policy_yaml


@pytest.fixture
async def gateway(upstreams, make_gateway):
    edge = await upstreams("edge-model")
    gw = await make_gateway(
        policy_yaml([(edge.url, "edge-model")], [], extra="limits:\n  max_body_bytes: 4096\n"),
        health_checks=False,
    )
    return gw, edge


OK_MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        (b"", 400, "invalid_json", None),
        (b"{not json", 400, "invalid_json", None),
        (b"[1, 2]", 400, "invalid_request", None),
        (b'"text"', 400, "invalid_request", None),
        (json.dumps({"model": "auto"}).encode(), 400, "invalid_request", "messages"),
        (json.dumps({"messages": []}).encode(), 400, "invalid_request", "messages"),
        (json.dumps({"messages": "hi"}).encode(), 400, "invalid_request", "messages"),
        (json.dumps({"messages": ["hi"]}).encode(), 400, "invalid_request", "messages[0]"),
        (
            json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(),
            400,
            "invalid_request",
            "messages[0].role",
        ),
        (
            json.dumps({"messages": [{"role": "user"}]}).encode(),
            400,
            "invalid_request",
            "messages[0].content",
        ),
        (
            json.dumps({"messages": [{"role": "user", "content": 42}]}).encode(),
            400,
            "invalid_request",
            "messages[0].content",
        ),
        (
            json.dumps(
                {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}
            ).encode(),
            400,
            "invalid_request",
            "messages[0].content[0].text",
        ),
        (
            json.dumps({"messages": OK_MESSAGES, "model": 7}).encode(),
            400,
            "invalid_request",
            "model",
        ),
        (
            json.dumps({"messages": OK_MESSAGES, "stream": "yes"}).encode(),
            400,
            "invalid_request",
            "stream",
        ),
        (
            json.dumps({"messages": OK_MESSAGES, "max_tokens": -5}).encode(),
            400,
            "invalid_request",
            "max_tokens",
        ),
        (
            json.dumps({"messages": OK_MESSAGES, "max_tokens": True}).encode(),
            400,
            "invalid_request",
            "max_tokens",
        ),
        (
            json.dumps({"messages": OK_MESSAGES, "temperature": 9}).encode(),
            400,
            "invalid_request",
            "temperature",
        ),
        (
            json.dumps(
                {"messages": OK_MESSAGES, "stream_options": {"include_usage": "y"}}
            ).encode(),
            400,
            "invalid_request",
            "stream_options.include_usage",
        ),
        (json.dumps({"messages": OK_MESSAGES, "user": 5}).encode(), 400, "invalid_request", "user"),
        (
            json.dumps({"messages": OK_MESSAGES, "model": "gpt-42"}).encode(),
            404,
            "model_not_found",
            "model",
        ),
        (b"[" * 100000 + b"]" * 100000, 413, "request_too_large", None),
        (
            json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]}).encode(),
            413,
            "request_too_large",
            None,
        ),
    ],
)
async def test_bad_bodies(gateway, body: bytes, status: int, code: str, param: str | None) -> None:
    gateway, edge = gateway
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + "/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status == status
        payload = await response.json()
    assert payload["error"]["code"] == code
    assert payload["error"]["param"] == param
    assert payload["error"]["type"] == "invalid_request_error"
    assert "Traceback" not in payload["error"]["message"]
    assert edge.calls == 0


async def test_deeply_nested_json_under_the_size_limit_is_a_400(upstreams, make_gateway) -> None:
    edge = await upstreams("edge-model")
    gateway = await make_gateway(policy_yaml([(edge.url, "edge-model")], []), health_checks=False)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + "/v1/chat/completions", data=b"[" * 200_000 + b"]" * 200_000
        ) as response,
    ):
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_json"


async def test_chunked_body_over_the_limit_is_413(gateway) -> None:
    gateway, _ = gateway

    async def body():
        for _ in range(10):
            yield b"x" * 1000

    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.url + "/v1/chat/completions", data=body()) as response:
            assert response.status == 413


async def test_unknown_path_and_method_are_openai_style(gateway) -> None:
    gateway, _ = gateway
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url + "/v1/nothing") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "not_found"
        async with session.get(gateway.url + "/v1/chat/completions") as response:
            assert response.status == 405
            assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_bad_tier_header_is_400(gateway) -> None:
    gateway, _ = gateway
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + "/v1/chat/completions",
            json={"messages": OK_MESSAGES},
            headers={"x-gateway-tier": "moon"},
        ) as response,
    ):
        assert response.status == 400
        assert (await response.json())["error"]["param"] == "x-gateway-tier"


async def test_multipart_content_and_assistant_tool_calls_are_accepted(gateway) -> None:
    gateway, _ = gateway
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {"type": "image_url", "image_url": {"url": "x"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "t", "content": "42"},
    ]
    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.url + "/v1/chat/completions", json={"messages": messages}) as response,
    ):
        assert response.status == 200
