"""Bad input gets an OpenAI-style 4xx naming the problem; never a 500 or a traceback."""

from __future__ import annotations

import gzip
import json
import zlib

import aiohttp
import pytest

from tests.conftest import policy_yaml
from tests.scripted import Script


def scripted_edge(policy: str) -> str:
    """``policy`` whose edge tier declares what a scripted node accepts (several choices,
    image parts), so that requests using them are admitted to it."""
    return policy.replace(
        "context_window: 2048\n", "context_window: 2048\n    supports: [n, images]\n"
    )


@pytest.fixture
async def gateway(upstreams, make_gateway):
    edge = await upstreams("edge-model")
    gw = await make_gateway(
        scripted_edge(
            policy_yaml([(edge.url, "edge-model")], [], extra="limits:\n  max_body_bytes: 4096\n")
        ),
        health_checks=False,
    )
    return gw, edge


OK_MESSAGES = [{"role": "user", "content": "hi"}]
HI = b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}]'
"""A valid body without its closing brace, for bodies Python's json cannot write."""


def chat(**fields: object) -> dict[str, object]:
    """A valid request (``model`` auto, one message) with ``fields`` added or replaced."""
    return {"model": "auto", "messages": OK_MESSAGES, **fields}


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        (b"", 400, "invalid_json", None),
        (b"{not json", 400, "invalid_json", None),
        (b"[1, 2]", 400, "invalid_request", None),
        (b'"text"', 400, "invalid_request", None),
        (json.dumps({"model": "auto"}).encode(), 400, "invalid_request", "messages"),
        # OpenAI's API requires a model; the policy may name a default (routing.default_model).
        (json.dumps({"messages": OK_MESSAGES}).encode(), 400, "invalid_request", "model"),
        (json.dumps(chat(model=None)).encode(), 400, "invalid_request", "model"),
        (json.dumps(chat(messages=[])).encode(), 400, "invalid_request", "messages"),
        (json.dumps(chat(messages="hi")).encode(), 400, "invalid_request", "messages"),
        (json.dumps(chat(messages=["hi"])).encode(), 400, "invalid_request", "messages[0]"),
        (
            json.dumps(chat(messages=[{"role": "wizard", "content": "x"}])).encode(),
            400,
            "invalid_request",
            "messages[0].role",
        ),
        (
            json.dumps(chat(messages=[{"role": "user"}])).encode(),
            400,
            "invalid_request",
            "messages[0].content",
        ),
        (
            json.dumps(chat(messages=[{"role": "user", "content": 42}])).encode(),
            400,
            "invalid_request",
            "messages[0].content",
        ),
        (
            json.dumps(
                chat(messages=[{"role": "user", "content": [{"type": "text", "text": 1}]}])
            ).encode(),
            400,
            "invalid_request",
            "messages[0].content[0].text",
        ),
        (
            json.dumps(chat(model=7)).encode(),
            400,
            "invalid_request",
            "model",
        ),
        (
            json.dumps(chat(stream="yes")).encode(),
            400,
            "invalid_request",
            "stream",
        ),
        (
            json.dumps(chat(max_tokens=-5)).encode(),
            400,
            "invalid_request",
            "max_tokens",
        ),
        (
            json.dumps(chat(max_tokens=True)).encode(),
            400,
            "invalid_request",
            "max_tokens",
        ),
        (
            json.dumps(chat(temperature=9)).encode(),
            400,
            "invalid_request",
            "temperature",
        ),
        (
            json.dumps(chat(stream_options={"include_usage": "y"})).encode(),
            400,
            "invalid_request",
            "stream_options.include_usage",
        ),
        (json.dumps(chat(user=5)).encode(), 400, "invalid_request", "user"),
        (
            json.dumps(chat(model="gpt-42")).encode(),
            404,
            "model_not_found",
            "model",
        ),
        (b"[" * 100000 + b"]" * 100000, 413, "request_too_large", None),
        (
            json.dumps(chat(messages=[{"role": "user", "content": "x" * 5000}])).encode(),
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


@pytest.mark.parametrize("depth", [965, 970, 200_000])
async def test_deeply_nested_json_under_the_size_limit_is_a_400(
    upstreams, make_gateway, depth: int
) -> None:
    # ~965 levels parsed, then broke the encoder (a 500); far deeper breaks the parser.
    edge = await upstreams("edge-model")
    gateway = await make_gateway(policy_yaml([(edge.url, "edge-model")], []), health_checks=False)
    body = b'{"messages": [{"role": "user", "content": "hi"}], "x": '
    body += b"[" * depth + b"]" * depth + b"}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.url + "/v1/chat/completions", data=body) as response,
    ):
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == "invalid_request"
    assert "nested too deeply: at most 64 levels" in error["message"]
    # The parsed value names the param; one too deep to parse names the byte.
    assert error["param"] == "x" + "[0]" * 63 or "level 65 opens at byte 118" in error["message"]
    assert edge.calls == 0


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
            json=chat(),
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
        session.post(
            gateway.url + "/v1/chat/completions", json=chat(messages=messages)
        ) as response,
    ):
        assert response.status == 200


def escaped(body: dict[str, object]) -> bytes:
    """JSON with any lone surrogate escaped (``"\\ud800"``), as most clients write it."""
    return json.dumps(body).encode()


def raw_bytes(body: dict[str, object]) -> bytes:
    """JSON with a lone surrogate as raw bytes (``ED A0 80``), which Python's json accepts."""
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


LONE = "a\ud800b"
TOOL = {"type": "function", "function": {"name": LONE, "parameters": {"type": "object"}}}

UNENCODABLE = [
    (chat(messages=[{"role": "user", "content": LONE}]), "messages[0].content"),
    (
        chat(messages=[{"role": "user", "content": [{"type": "text", "text": LONE}]}]),
        "messages[0].content[0].text",
    ),
    (
        chat(messages=[{"role": "user", "content": [{"type": LONE, "image_url": {"url": "x"}}]}]),
        "messages[0].content[0].type",
    ),
    (chat(messages=[{"role": "user", "content": "hi", "name": LONE}]), "messages[0].name"),
    (chat(messages=[{"role": LONE, "content": "hi"}]), "messages[0].role"),
    (chat(stop=LONE), "stop"),
    (chat(stop=["fine", LONE]), "stop[1]"),
    (chat(user=LONE), "user"),
    (chat(model=LONE), "model"),
    (chat(tools=[TOOL]), "tools[0].function.name"),
    (chat(metadata={"note": {"deep": [LONE]}}), "metadata.note.deep[0]"),
    (chat(metadata={LONE: 1}), "metadata"),
    ({**chat(), LONE: 1}, None),
]


@pytest.mark.parametrize("encode", [escaped, raw_bytes], ids=["escaped", "raw-bytes"])
@pytest.mark.parametrize(("body", "param"), UNENCODABLE, ids=[p or "top" for _, p in UNENCODABLE])
async def test_text_that_utf8_cannot_encode_is_a_400_naming_the_param(
    gateway, encode, body: dict[str, object], param: str | None
) -> None:
    gateway, edge = gateway
    status, payload = await post(gateway, encode(body))
    assert (status, payload["error"]["param"]) == (400, param)
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["code"] == "invalid_request"
    assert "surrogate" in payload["error"]["message"]
    assert edge.calls == 0


def nested(depth: int, field: str = "metadata") -> bytes:
    """A body whose ``field`` is ``depth - 1`` arrays deep (the body itself is level 1)."""
    arrays = b"[" * (depth - 1) + b"]" * (depth - 1)
    return escaped(chat())[:-1] + b', "' + field.encode() + b'": ' + arrays + b"}"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        # The 500s found by the fuzzer: an unhashable role, a 401-digit integer, depth ~965.
        (escaped(chat(messages=[{"role": ["user"], "content": "hi"}])), "messages[0].role"),
        (escaped(chat(messages=[{"role": {"a": 1}, "content": "hi"}])), "messages[0].role"),
        (escaped(chat(messages=[{"role": 7, "content": "hi"}])), "messages[0].role"),
        (HI + b', "max_tokens": 1' + b"0" * 400 + b"}",
         "max_tokens"),
        (HI + b', "max_completion_tokens": 1'
         + b"0" * 400 + b"}", "max_completion_tokens"),
        (escaped(chat(max_tokens=2**31)), "max_tokens"),
        (escaped(chat(max_completion_tokens=2**63)), "max_completion_tokens"),
        (escaped(chat(n=129)), "n"),
        (escaped(chat(n=10**30)), "n"),
        (nested(500), "metadata" + "[0]" * 63),
        (nested(66), "metadata" + "[0]" * 63),
        (escaped(chat(tools=[{"function": {"parameters": {"items": json.loads(nested(64))}}}])),
         "tools[0].function.parameters.items.metadata" + "[0]" * 58),
        (HI + b', "temperature": NaN}', "temperature"),
        (HI + b', "seed": Infinity}', "seed"),
        (HI + b', "logit_bias": {"1": 1e999}}',
         "logit_bias.1"),
    ],
)  # fmt: skip
async def test_values_the_gateway_cannot_carry_are_a_400_naming_the_param(
    gateway, body: bytes, param: str
) -> None:
    gateway, edge = gateway
    status, payload = await post(gateway, body)
    assert (status, payload["error"]["param"]) == (400, param)
    assert payload["error"]["type"] == "invalid_request_error"
    assert edge.calls == 0


@pytest.mark.parametrize(
    "body",
    [
        nested(64),  # as deep as allowed
        escaped(chat(max_tokens=2**31 - 1)),
        escaped(chat(n=128)),
        escaped(chat(messages=[{"role": "user", "content": "emoji \U0001f600 and \u00e9"}])),
    ],
    ids=["depth-64", "max-tokens-limit", "n-limit", "valid-pair"],
)
async def test_values_at_the_limits_are_served(gateway, body: bytes) -> None:
    gateway, edge = gateway
    status, _ = await post(gateway, body)
    assert status == 200
    assert edge.calls == 1


@pytest.mark.parametrize("seed", [2**63 - 1, 2**64 - 1, 2**70 + 1, -(2**65) - 1])
async def test_integers_a_node_is_passed_stay_exact_however_long(gateway, seed: int) -> None:
    """The gateway parses bodies with orjson unless a number could be past 64 bits, which
    orjson would turn into a float: the node gets the client's own integer."""
    gateway, edge = gateway
    status, _ = await post(gateway, escaped(chat(seed=seed, metadata={"id": seed})))
    assert status == 200
    seen = edge.seen[0].body
    assert seen["seed"] == seed and seen["metadata"] == {"id": seed}
    assert type(seen["seed"]) is int  # not a float that happens to compare equal


async def post(gateway, body: bytes, **headers: str) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.post(
            gateway.url + "/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json", **headers},
            skip_auto_headers=["Content-Encoding"],
        ) as response,
    ):
        return response.status, await response.json()


@pytest.mark.parametrize(
    ("encoding", "body", "status", "code"),
    [
        ("gzip", escaped(chat()), 400, "invalid_request"),  # declared gzip, sent plain
        ("deflate", b"\x00\x01not deflate", 400, "invalid_request"),
        ("gzip", b"\x1f\x8b" + b"\xff" * 30, 400, "invalid_request"),  # a gzip header, then junk
        # Cut short: the stream decodes as far as it goes, which is not a JSON document.
        ("gzip", gzip.compress(escaped(chat()))[:20], 400, "invalid_json"),
        ("gzip", gzip.compress(escaped(chat())), 200, None),
        ("deflate", zlib.compress(escaped(chat())), 200, None),
    ],
    ids=["gzip-plain", "deflate-garbage", "gzip-junk", "gzip-truncated", "gzip-ok", "deflate-ok"],
)
async def test_a_body_that_does_not_decode_is_a_400(
    gateway, encoding: str, body: bytes, status: int, code: str | None
) -> None:
    gateway, edge = gateway
    got, payload = await post(gateway, body, **{"Content-Encoding": encoding})
    assert got == status
    if status == 400:
        assert payload["error"]["type"] == "invalid_request_error"
        assert payload["error"]["code"] == code
        if code == "invalid_request":
            assert "could not be read" in payload["error"]["message"]
        assert edge.calls == 0


SESSIONS = "sessions:\n  ttl_s: 600\n  max_turns: 50\n  redis_timeout_s: 0.5\n"


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["stream", "internal-stream", "plain"])
async def test_a_node_reply_utf8_cannot_encode_is_repaired(
    redis_server, upstreams, make_gateway, mode: str
) -> None:
    # A node sent "\ud800" (escaped in its JSON): the streamed answer ended after [DONE]
    # without its terminating chunk and the turn was lost; a non-streamed one was a 500.
    edge = await upstreams("edge-model")
    edge.script = Script(chunks=("Hel", "\ud800", "lo"))
    gateway = await make_gateway(
        scripted_edge(policy_yaml([(edge.url, "edge-model")], [], extra=SESSIONS)),
        health_checks=False,
        redis_url=redis_server.url,
    )
    body: dict[str, object] = chat()
    if mode == "stream":
        body["stream"] = True
    if mode == "plain":
        body["n"] = 2  # several choices: fetched without a stream, assembled by the node
    async with aiohttp.ClientSession() as session:
        async with session.post(
            gateway.url + "/v1/chat/completions", json=body, headers={"x-session-id": "s-1"}
        ) as response:
            assert response.status == 200
            raw = await response.read()  # the whole body: the stream was terminated
        text = raw.decode("utf-8")  # strict: nothing in it that UTF-8 cannot carry
        if mode == "stream":
            events = [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            answer = "".join(
                c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
            )
        else:
            answer = json.loads(text)["choices"][0]["message"]["content"]
        assert answer == "Hel\ufffdlo"
        async with session.get(gateway.url + "/v1/sessions/s-1") as response:
            assert response.status == 200
            turns = (await response.json())["turns"]
    assert [(t["role"], t["content"]) for t in turns] == [
        ("user", "hi"),
        ("assistant", "Hel\ufffdlo"),
    ]
