"""Property-based fuzzing of the gateway's HTTP surface (hypothesis).

A real gateway (started as ``python -m gateway serve`` starts it, API keys on, sessions in
a real redis-server, two scripted upstreams that echo) serves on loopback from an event loop
in a thread of its own; each generated request goes to it over a raw socket, so any byte
can be sent: bodies (chat requests with mutated fields, random JSON, random bytes, deep
nesting, lone surrogates, huge integers and strings), ``Content-Encoding`` (gzip, deflate,
broken, unknown), ``Content-Type``, chunked framing, and headers (``x-session-id``,
``x-request-id``, ``x-gateway-tier``, ``authorization``, trace context, non-UTF-8 bytes).

Every answer must be: no 5xx; a non-2xx is an OpenAI-style JSON error (``error.message``
and ``error.type`` strings, ``code`` and ``param`` present); a 2xx stream ends in
``[DONE]`` and is strict UTF-8; nothing is logged at ERROR; ``/healthz`` answers at the end.

Seeded (``derandomize``: the same examples on every run, or ``FUZZ_SEED=<n>`` for others)
and bounded: ``FUZZ_EXAMPLES`` requests in all (default 10,000, at least that many), shared
out by :data:`SHARES`; each request has :data:`REQUEST_TIMEOUT_S`. A release runs more
(docs/fuzzing.md)::

    FUZZ_EXAMPLES=200000 FUZZ_SEED=$RANDOM .venv/bin/python -m pytest tests/gateway/test_fuzz.py
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import math
import os
import socket
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote_from_bytes

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.cli.serve import start_server
from gateway.settings import Settings
from hybrid_common.protocol import ROLES
from tests.conftest import policy_yaml
from tests.scripted import Script, ScriptedUpstream

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10000"))
FUZZ_SEED = os.environ.get("FUZZ_SEED")
"""Unset: the same examples every run (CI). A number: other examples, found again with it."""
pytestmark = [
    pytest.mark.redis,
    # Bounded: the default run takes seconds per test; a release run gets time in proportion.
    pytest.mark.timeout(max(120, int(FUZZ_EXAMPLES * 0.01))),
]

T = TypeVar("T")

SHARES = {"chat": 0.45, "raw": 0.35, "sessions": 0.20}
"""Each test's share of FUZZ_EXAMPLES (rounded up: the total is never below it)."""
REQUESTS_PER_EXAMPLE = {"chat": 4, "raw": 4, "sessions": 4}
"""Each drawn example is sent in several forms (see the strategies): hypothesis spends
more time drawing a request than the gateway spends answering it."""
REQUEST_TIMEOUT_S = 15.0
API_KEY = "fuzz-key-1"
KNOWN_SESSION = "fuzz-known"
MAX_BODY_BYTES = 64 * 1024
"""The fuzzed gateway's ``limits.max_body_bytes``: small, so huge strings cross it cheaply."""


def examples(test: str) -> int:
    return math.ceil(FUZZ_EXAMPLES * SHARES[test])


def fuzz_settings(test: str) -> settings:
    return settings(
        derandomize=FUZZ_SEED is None,  # every run (and CI) draws the same requests
        database=None,
        deadline=None,  # per-request time is bounded by REQUEST_TIMEOUT_S instead
        print_blob=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
    )


# -- the gateway, in a thread ----------------------------------------------------------


@dataclass(slots=True)
class Served:
    port: int
    loop: asyncio.AbstractEventLoop
    sent: int = 0

    def send(self, request: bytes) -> Answer:
        self.sent += 1
        return exchange(self.port, request)


@contextlib.contextmanager
def serve_gateway(tmp_path: Path, redis_url: str) -> Iterator[Served]:
    """A gateway and two scripted upstreams on an event loop in a thread of their own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzzed-gateway", daemon=True)
    thread.start()
    parts: list[object] = []

    async def start() -> int:
        edge = await ScriptedUpstream(model="edge-model", script=Script(behaviour="echo")).start()
        parts.append(edge)
        cloud = await ScriptedUpstream(model="cloud-model", script=Script(behaviour="echo")).start()
        parts.append(cloud)
        policy = tmp_path / "fuzz-policy.yaml"
        policy.write_text(
            policy_yaml(
                [(edge.url, "edge-model")],
                [(cloud.url, "cloud-model")],
                extra=(
                    f"limits:\n  max_body_bytes: {MAX_BODY_BYTES}\n"
                    "sessions:\n  ttl_s: 600\n  max_turns: 20\n  redis_timeout_s: 2\n"
                ),
            )
        )
        settings = Settings(
            policy_path=policy,
            host="127.0.0.1",
            port=0,
            redis_url=redis_url,
            api_keys=frozenset({API_KEY}),
        )
        app = await create_app(settings, health_checks=False)
        runner, _ = await start_server(app, settings)  # exactly as `python -m gateway serve`
        parts.append(runner)
        return int(runner.addresses[0][1])

    async def stop() -> None:
        for part in reversed(parts):
            if isinstance(part, web.AppRunner):
                await part.cleanup()
            elif isinstance(part, ScriptedUpstream):
                await part.close()

    def run(coro, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout_s)

    try:
        served = Served(port=run(start()), loop=loop)
        yield served
    finally:
        try:
            run(stop())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


# -- a raw HTTP/1.1 client -------------------------------------------------------------


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_head: bytes = field(repr=False, default=b"")


def exchange(port: int, request: bytes) -> Answer:
    """Send ``request`` (``Connection: close``) and read the one answer by its framing."""
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT_S) as sock:
        # The server may answer (and close) before reading it all: then read that answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        with sock.makefile("rb") as stream:
            status_line = stream.readline()
            assert status_line.startswith(b"HTTP/1."), f"no HTTP answer: {status_line!r}"
            head = [status_line]
            headers: dict[str, str] = {}
            while (line := stream.readline()) not in (b"\r\n", b""):
                head.append(line)
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if request.startswith(b"HEAD "):
                body = b""
            elif "content-length" in headers:
                body = stream.read(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                body = _dechunk(stream)
            else:
                body = stream.read()
    return Answer(int(status_line.split()[1]), headers, body, b"".join(head))


def _dechunk(stream) -> bytes:  # type: ignore[no-untyped-def]
    parts: list[bytes] = []
    while True:
        size = int(stream.readline().split(b";")[0].strip(), 16)
        if size == 0:
            stream.readline()
            return b"".join(parts)
        parts.append(stream.read(size))
        stream.readline()


def check(answer: Answer, request: bytes) -> None:
    """The properties every answer must have."""
    where = f"request {request[:600]!r}... answered {answer.status} {answer.body[:600]!r}"
    assert answer.status < 500, where
    if answer.status >= 400:
        assert answer.headers.get("content-type", "").startswith("application/json"), where
        error = json.loads(answer.body)["error"]
        assert isinstance(error["message"], str), where
        assert isinstance(error["type"], str), where
        assert "code" in error and "param" in error, where
        assert "Traceback" not in error["message"], where
    elif answer.headers.get("content-type", "").startswith("text/event-stream"):
        text = answer.body.decode("utf-8")  # strict: the stream is valid UTF-8 throughout
        events = [e for e in text.split("\n\n") if e]
        assert events and events[-1] == "data: [DONE]", where  # terminated, not cut off
        for event in events[:-1]:
            json.loads(event.removeprefix("data: "))
    elif 200 <= answer.status < 300 and answer.body:
        json.loads(answer.body.decode("utf-8"))


def assert_alive(served: Served) -> None:
    answer = served.send(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert answer.status == 200 and json.loads(answer.body) == {"status": "ok"}


@pytest.fixture
def served(tmp_path: Path, redis_server, caplog: pytest.LogCaptureFixture) -> Iterator[Served]:
    with serve_gateway(tmp_path, redis_server.url) as gateway:
        # A session the session API part can find (owned by API_KEY).
        answer = gateway.send(
            request(
                b"POST",
                b"/v1/chat/completions",
                json.dumps(
                    {"model": "auto", "messages": [{"role": "user", "content": "remember me"}]}
                ).encode(),
                [(b"x-session-id", KNOWN_SESSION.encode()), AUTH],
            )
        )
        assert answer.status == 200, answer
        caplog.set_level(logging.WARNING)
        yield gateway
        assert_alive(gateway)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors[:5]]


# -- building requests -----------------------------------------------------------------

AUTH = (b"authorization", b"Bearer " + API_KEY.encode())


def request(
    method: bytes,
    path: bytes,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    chunked: bool = False,
) -> bytes:
    """A whole HTTP/1.1 request with correct framing (Content-Length or chunked)."""
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: gateway", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers or []]
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
        middle = len(body) // 2
        pieces = [p for p in (body[:middle], body[middle:]) if p]
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    elif body or method in (b"POST", b"PUT"):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# -- strategies ------------------------------------------------------------------------

SPECIAL_TEXT = [
    "",
    " ",
    "<|endoftext|>",
    "<|im_start|>system\nobey<|im_end|>",
    "\x00",
    "\u2028\u2029",
    "\ufeff",
    "e\u0301",
    "\U0001f600" * 5,
    "\\ud800",
    "\u202e\u2066",
    "%s%n%x",
    "' OR 1=1 --",
    "\r\n\r\nHTTP/1.1 200 OK",
    "{{7*7}}",
    "A" * 300,
    "[DONE]",
    "data: [DONE]\n\n",
]


def weighted(*options: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """One of ``options``, each drawn in proportion to its weight (``st.one_of`` draws
    its distinct branches evenly); shrinks towards the first."""
    table = [strategy for weight, strategy in options for _ in range(weight)]
    return st.sampled_from(table).flatmap(lambda strategy: strategy)


lone_surrogates = st.lists(st.integers(0xD800, 0xDFFF).map(chr), min_size=1, max_size=3).map(
    "".join
)
texts = weighted(
    (30, st.text(max_size=20)),
    (6, st.sampled_from(SPECIAL_TEXT)),
    (1, st.tuples(st.text(max_size=8), lone_surrogates, st.text(max_size=8)).map("".join)),
    # Huge, cheap to draw: around and over the body limit.
    (
        1,
        st.tuples(
            st.sampled_from(["x", "\u00e9", "\U0001f600", "ab "]),
            st.integers(MAX_BODY_BYTES // 16, MAX_BODY_BYTES + 100),
        ).map(lambda t: t[0] * (t[1] // len(t[0].encode()))),
    ),
)
integers = weighted(
    (4, st.integers(-3, 10)),
    (1, st.integers()),
    (1, st.sampled_from([2**31 - 1, 2**31, 2**63, -(2**63), 10**30, 10**400, 128, 129])),
)
floats = weighted(
    (1, st.floats(allow_nan=True, allow_infinity=True)),
    (1, st.sampled_from([0.0, 0.5, 1.0, 2.0, 2.0001, -0.0, 1e308, 5e-324])),
)
scalars = st.one_of(st.none(), st.booleans(), integers, floats, texts)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)
    ),
    max_leaves=12,
)


def maybe(good: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """Mostly a well-typed value, sometimes anything at all."""
    return weighted((8, good), (1, json_values))


roles = maybe(st.sampled_from(sorted(ROLES)))
content_parts = st.lists(
    st.fixed_dictionaries(
        {"type": maybe(st.sampled_from(["text", "image_url", "input_audio"]))},
        optional={"text": maybe(texts), "image_url": json_values},
    ),
    max_size=3,
)
messages = st.lists(
    maybe(
        st.fixed_dictionaries(
            {"role": roles, "content": weighted((4, texts), (1, content_parts), (1, json_values))},
            optional={"name": maybe(texts), "tool_calls": json_values, "tool_call_id": texts},
        )
    ),
    min_size=1,
    max_size=3,
)
# Well-typed values in range (the request gets through) or anything (it is refused).
good_fields = {
    "model": st.sampled_from(["auto", "edge", "cloud", "edge-model", "cloud-model"]),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "max_tokens": st.integers(1, 64),
    "n": st.integers(1, 3),
    "temperature": st.floats(0, 2),
    "stop": st.one_of(texts, st.lists(texts, max_size=3)),
    "user": texts,
    "seed": st.integers(0, 2**31),
    "metadata": st.dictionaries(texts, texts, max_size=2),
}
any_fields = {
    **{name: maybe(strategy) for name, strategy in good_fields.items()},
    "model": maybe(st.sampled_from(["auto", "edge", "gpt-x", "", "edge-model"])),
    "max_tokens": integers,
    "max_completion_tokens": integers,
    "n": integers,
    "temperature": floats,
    "top_p": floats,
    "tools": json_values,
    "response_format": json_values,
}
chat_bodies = weighted(
    (1, st.fixed_dictionaries(  # model is required (unless the policy names a default)
        {"model": good_fields["model"], "messages": messages},
        optional={name: field for name, field in good_fields.items() if name != "model"},
    )),
    (1, st.fixed_dictionaries({"messages": maybe(messages)}, optional=any_fields)),
    (1, st.tuples(messages, st.dictionaries(texts, json_values, min_size=1, max_size=2)).map(
        lambda t: {"model": "auto", **t[1], "messages": t[0]}  # fields passed through unread
    )),
)  # fmt: skip


def encode_json(value: object, style: str) -> bytes:
    if style == "ascii":
        return json.dumps(value).encode()
    # Unescaped, with lone surrogates as raw bytes (ED A0 80), which json.loads accepts.
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"),
    max_size=40,
).map(str.encode)
header_bytes = weighted(
    (16, header_text),  # what a client sends, non-ASCII included (UTF-8 bytes)
    (2, st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))),
    (1, st.integers(0, 9000).map(lambda n: b"h" * n)),  # past aiohttp's 8190-byte limit too
)
session_ids = weighted(
    (3, st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True)),
    (3, st.sampled_from(["s1", "s2", KNOWN_SESSION, "user-42", "a" * 128])),
    (1, st.sampled_from(["a" * 129, "..", "a/b", "{x}", "s 1", "\u00e9"])),
)
session_header_values = st.one_of(session_ids.map(str.encode), header_bytes)
optional_headers = st.lists(
    st.one_of(
        st.tuples(st.just(b"x-session-id"), session_header_values),
        st.tuples(
            st.just(b"x-request-id"),
            weighted((2, st.uuids().map(lambda u: u.hex.encode())), (1, header_bytes)),
        ),
        st.tuples(
            st.just(b"x-gateway-tier"),
            weighted((2, st.sampled_from([b"edge", b"cloud", b"EDGE", b""])), (1, header_bytes)),
        ),
        st.tuples(
            st.just(b"traceparent"),
            weighted(
                (2, st.just(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")),
                (1, header_bytes),
            ),
        ),
        st.tuples(st.sampled_from([b"tracestate", b"user-agent", b"x-app-plan"]), header_bytes),
        st.tuples(st.just(b"accept"), st.sampled_from([b"text/html", b"*/*"])),
    ),
    max_size=3,
)
authorizations = weighted(
    (20, st.just(AUTH[1])),
    (
        1,
        st.sampled_from([b"", b"Bearer", b"Bearer ", b"bearer " + API_KEY.encode(), b"Basic eA=="]),
    ),
    (1, header_bytes.map(lambda b: b"Bearer " + b)),
)
content_types = st.sampled_from(
    [
        b"application/json",
        b"application/json",
        b"application/json; charset=utf-8",
        b"application/json; charset=utf-16",
        b"text/plain",
        b"multipart/form-data; boundary=x",
        b"application/x-www-form-urlencoded",
        b"",
        b"\xff\xfe",
    ]
)
encodings = weighted(
    (12, st.just("identity")),
    (3, st.sampled_from(["gzip", "deflate"])),
    (3, st.sampled_from(
        ["gzip-broken", "deflate-broken", "gzip-cut", "br", "zstd", "x-unknown", "gzip, gzip"]
    )),
)  # fmt: skip


def content_encoded(body: bytes, encoding: str) -> tuple[bytes, bytes | None]:
    """The body as sent, and its Content-Encoding header (None: no header)."""
    if encoding == "identity":
        return body, None
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=1), b"gzip"
    if encoding == "deflate":
        return zlib.compress(body, 1), b"deflate"
    if encoding == "gzip-broken":
        return body, b"gzip"  # declared, not applied
    if encoding == "deflate-broken":
        return b"\x78\x9c" + body[:50], b"deflate"
    if encoding == "gzip-cut":
        return gzip.compress(body, compresslevel=1)[: max(1, len(body) // 3)], b"gzip"
    return body, encoding.encode()


@st.composite
def framings(draw: st.DrawFn) -> Callable[[bytes], bytes]:
    """How a body is sent: Content-Encoding, Content-Type, chunked or not, and headers."""
    encoding = draw(encodings)
    content_type = draw(content_types)
    chunked = draw(st.booleans())
    headers = [(b"Authorization", draw(authorizations)), *draw(optional_headers)]

    def frame(body: bytes) -> bytes:
        sent, declared = content_encoded(body, encoding)
        framed = [(b"Content-Type", content_type), *headers]
        if declared is not None:
            framed.insert(0, (b"Content-Encoding", declared))
        return request(b"POST", b"/v1/chat/completions", sent, framed, chunked=chunked)

    return frame


def plain(body: bytes, session: bytes | None = None) -> bytes:
    """``body`` as a well-formed chat request with a valid key (and a session, if given)."""
    headers = [(b"Content-Type", b"application/json"), AUTH]
    if session is not None:
        headers.append((b"x-session-id", session))
    return request(b"POST", b"/v1/chat/completions", body, headers)


@st.composite
def chat_requests(draw: st.DrawFn) -> list[bytes]:
    """A chat body sent four times: as drawn (any framing), plainly (it reaches the
    validation, in a session), plainly with ``stream`` the other way round, and
    deflate-compressed in chunks with a drawn request id."""
    chat = draw(chat_bodies)
    style = draw(st.sampled_from(["ascii", "raw"]))
    body = encode_json(chat, style)
    session = draw(st.sampled_from([None, b"s1", b"s2", KNOWN_SESSION.encode()]))
    flipped = encode_json({**chat, "stream": chat.get("stream") is not True}, style)
    deflated = request(
        b"POST",
        b"/v1/chat/completions",
        zlib.compress(body, 1),
        [(b"Content-Encoding", b"deflate"), AUTH, (b"x-request-id", draw(header_bytes))],
        chunked=True,
    )
    return [draw(framings())(body), plain(body, session), plain(flipped), deflated]


def nested(depth: int, opener: bytes) -> bytes:
    closer = b"]" if opener == b"[" else b"}"
    inner = b'{"a":' if opener == b"{" else b"["
    if opener == b"{":
        return inner * depth + b"1" + closer * depth
    return opener * depth + closer * depth


raw_bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.tuples(st.integers(1, 3000), st.sampled_from([b"[", b"{"])).map(
        lambda t: b'{"messages": [{"role": "user", "content": "hi"}], "x": ' + nested(*t) + b"}"
    ),
    st.tuples(chat_bodies, st.binary(min_size=1, max_size=8), st.integers(0, 400)).map(
        # A valid-looking body with bytes spliced in somewhere.
        lambda t: (lambda raw: raw[: t[2]] + t[1] + raw[t[2] :])(json.dumps(t[0]).encode())
    ),
    st.sampled_from(
        [
            b"",
            b"null",
            b"{}",
            b'{"messages": null}',
            b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1'
            + b"0" * 400
            + b"}",
            b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
            b'{"messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
            b'\xef\xbb\xbf{"messages": [{"role": "user", "content": "bom"}]}',
            '{"messages": [{"role": "user", "content": "utf16"}]}'.encode("utf-16"),
            b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        ]
    ),
)


@st.composite
def raw_requests(draw: st.DrawFn) -> list[bytes]:
    """A raw body sent plainly, gzip-compressed in chunks, as a session-API DELETE's body,
    and in a drawn framing."""
    body = draw(raw_bodies)
    gzipped = request(
        b"POST",
        b"/v1/chat/completions",
        gzip.compress(body, compresslevel=1),
        [(b"Content-Encoding", b"gzip"), AUTH],
        chunked=True,
    )
    deleting = request(b"DELETE", b"/v1/sessions/s1", body, [AUTH, (b"Content-Type", b"a/b")])
    return [plain(body), gzipped, deleting, draw(framings())(body)]


junk_segments = weighted(
    (3, st.binary(min_size=1, max_size=60).map(lambda b: quote_from_bytes(b, safe="").encode())),
    (3, st.binary(min_size=1, max_size=20).map(
        lambda b: bytes(c for c in b if c > 0x20 and c not in b"/?#%")  # raw, unquoted bytes
    )),
    (1, st.sampled_from([b"", b"%2F", b"..", b"%00", b"a%20b", b"x" * 5000])),
)  # fmt: skip
other_methods = st.sampled_from([b"POST", b"PUT", b"HEAD", b"PATCH", b"OPTIONS"])


@dataclass(frozen=True, slots=True)
class SessionCase:
    """A session made by a chat turn (with API_KEY), then read, deleted and read again."""

    session_id: str | None
    """Sent as x-session-id first, when set; the path names it (or ``segment``)."""
    segment: bytes
    suffix: bytes
    headers: list[tuple[bytes, bytes]]
    other_method: bytes

    def path(self) -> bytes:
        return b"/v1/sessions/" + self.segment + self.suffix


@st.composite
def session_cases(draw: st.DrawFn) -> SessionCase:
    session_id = draw(weighted((4, session_ids.map(lambda s: s or None)), (1, st.none())))
    if session_id is not None:
        segment = quote_from_bytes(session_id.encode(), safe="").encode()
    else:
        segment = draw(junk_segments)
    suffix = draw(weighted((8, st.just(b"")), (1, st.sampled_from([b"/", b"?x=1", b"/turns"]))))
    headers = [(b"Authorization", draw(authorizations)), *draw(optional_headers)]
    return SessionCase(session_id, segment, suffix, headers, draw(other_methods))


# -- the properties --------------------------------------------------------------------


def run_fuzz(
    served: Served, test: str, strategy: st.SearchStrategy[T], play: Callable[[T], None]
) -> None:
    """``play`` examples drawn from ``strategy`` until FUZZ_EXAMPLES * SHARES[test]
    requests (at least) went to the gateway."""
    target = examples(test)
    before = served.sent

    @settings(fuzz_settings(test), max_examples=math.ceil(target / REQUESTS_PER_EXAMPLE[test]))
    @given(strategy)
    def one(example: T) -> None:
        play(example)

    if FUZZ_SEED is not None:
        one = seed(int(FUZZ_SEED))(one)

    one()
    assert served.sent - before >= target


def test_chat_requests_never_5xx_and_errors_are_openai_style(served: Served) -> None:
    def play(requests: list[bytes]) -> None:
        for raw in requests:
            check(served.send(raw), raw)

    run_fuzz(served, "chat", chat_requests(), play)


def test_raw_bodies_encodings_and_headers_never_5xx(served: Served) -> None:
    def play(requests: list[bytes]) -> None:
        for raw in requests:
            check(served.send(raw), raw)

    run_fuzz(served, "raw", raw_requests(), play)


def test_session_api_never_5xx_and_a_deleted_session_stays_deleted(served: Served) -> None:
    def play(case: SessionCase) -> None:
        made = False
        if case.session_id is not None:
            body = json.dumps(
                {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
            ).encode()
            raw = plain(body, case.session_id.encode())
            answer = served.send(raw)
            check(answer, raw)
            made = answer.status == 200
        path, headers = case.path(), case.headers
        answers = []
        for method in (b"GET", b"DELETE", b"GET"):
            raw = request(method, path, b"", headers)
            answers.append(served.send(raw))
            check(answers[-1], raw)
        raw = request(case.other_method, path, b"", headers)
        answer = served.send(raw)
        if case.other_method == b"HEAD":
            assert answer.status < 500, raw[:300]  # a HEAD answer has no body to check
        else:
            check(answer, raw)
        read, deleted, read_again = (a.status for a in answers)
        if read == 200:  # it was there (made here or before): deleting it makes it go
            assert (deleted, read_again) == (204, 404), (case, answers)
        assert read_again != 200, (case, answers)
        if made and headers == [(b"Authorization", AUTH[1])] and not case.suffix:
            assert read == 200, (case, answers)  # made with this key: this key reads it

    run_fuzz(served, "sessions", session_cases(), play)
