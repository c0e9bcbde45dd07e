"""Slow, idle and surplus client connections, over raw sockets on loopback.

The gateway runs as ``python -m gateway serve`` runs it (``start_server``: the same runner,
protocol and limits from :class:`ConnectionLimits`), with short deadlines. Each test waits
for the connection's end by reading until EOF under a deadline, and measures when it came.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.cli.serve import start_server
from gateway.http.connections import LINGER_S, GuardedRunner
from gateway.settings import ConnectionLimits, Settings, SettingsError, settings_from_env
from scripts.stack.processes import die_with_parent
from tests.conftest import policy_yaml
from tests.helpers import eventually
from tests.scripted import unused_port

ROOT = Path(__file__).resolve().parents[2]
SLACK_S = 1.5
"""Scheduling slack on two shared cores, on top of each deadline."""
CHAT_HEAD = (
    "POST /v1/chat/completions HTTP/1.1\r\n"
    "Host: gateway\r\n"
    "Content-Type: application/json\r\n"
    "X-Padding: {padding}\r\n"
    "Content-Length: {length}\r\n"
    "\r\n"
)
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"


@dataclass(slots=True)
class Listening:
    runner: GuardedRunner
    port: int


StartGateway = Callable[..., Awaitable[Listening]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[StartGateway]:
    """Start gateways the way ``serve`` does, on free ports; all stop at the end of the test."""
    runners: list[GuardedRunner] = []

    async def start(**limits: float) -> Listening:
        policy = tmp_path / f"policy-{len(runners)}.yaml"
        policy.write_text(policy_yaml([("http://127.0.0.1:9", "edge-model")], []))
        settings = Settings(
            policy_path=policy,
            host="127.0.0.1",
            port=0,
            connections=ConnectionLimits(**limits),  # type: ignore[arg-type]
        )
        app = await create_app(settings, health_checks=False)
        runner, site = await start_server(app, settings)
        runners.append(runner)
        return Listening(runner=runner, port=site.port)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_until_closed(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """Everything the server sends until it closes the connection; fails after ``timeout_s``."""
    received = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await reader.read(65536):
                received += chunk
    except ConnectionResetError:
        pass  # closed, abruptly: closed all the same
    except TimeoutError:
        raise AssertionError(
            f"the connection was still open after {timeout_s:g} s; got {bytes(received)!r}"
        ) from None
    return bytes(received)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response framed by Content-Length."""
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines if line)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


def parse(raw: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines if line)
    }
    return int(status_line.split()[1]), headers, json.loads(body)


async def test_headers_sent_at_one_byte_per_second_are_cut_at_the_header_deadline(
    serve: StartGateway,
) -> None:
    gateway = await serve(header_timeout_s=2.0)
    reader, writer = await connect(gateway.port)
    opened = time.monotonic()
    head = CHAT_HEAD.format(padding="x" * 200, length=2).encode()

    async def trickle() -> None:
        for byte in head:  # 1 byte per second: the headers would need minutes
            writer.write(bytes([byte]))
            await asyncio.sleep(1.0)

    sender = asyncio.create_task(trickle())
    try:
        raw = await read_until_closed(reader, 2.0 + SLACK_S)
    finally:
        sender.cancel()
        writer.close()
    assert time.monotonic() - opened >= 1.9  # the deadline, not a stray close
    status, headers, body = parse(raw)
    assert status == 408
    assert headers["content-type"] == "application/json"
    assert body["error"]["code"] == "request_timeout"  # type: ignore[index]
    assert body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


async def test_a_socket_that_never_sends_is_closed_at_the_header_deadline(
    serve: StartGateway,
) -> None:
    gateway = await serve(header_timeout_s=1.0, idle_timeout_s=60.0)
    reader, writer = await connect(gateway.port)
    opened = time.monotonic()
    try:
        raw = await read_until_closed(reader, 1.0 + SLACK_S)
    finally:
        writer.close()
    assert time.monotonic() - opened >= 0.9
    assert raw == b""  # nothing was asked, nothing is answered
    await eventually(lambda: gateway.runner.gate.open == 0)


async def test_an_unfinished_body_is_answered_408_and_closed(serve: StartGateway) -> None:
    gateway = await serve(body_timeout_s=1.0)
    reader, writer = await connect(gateway.port)
    writer.write(CHAT_HEAD.format(padding="x", length=1000).encode() + b'{"messages": [')
    sent = time.monotonic()
    try:
        raw = await read_until_closed(reader, 1.0 + LINGER_S + SLACK_S)
    finally:
        writer.close()
    assert time.monotonic() - sent >= 0.9
    status, headers, body = parse(raw)
    assert status == 408
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert body["error"]["code"] == "request_timeout"  # type: ignore[index]
    assert "x-request-id" in headers


async def test_a_408_closes_even_when_the_rest_of_the_body_arrives(serve: StartGateway) -> None:
    """``Connection: close`` on the 408 is kept: the rest of the body, sent after it, does not
    turn the connection back into a keep-alive one that serves the next request."""
    gateway = await serve(body_timeout_s=1.0)
    reader, writer = await connect(gateway.port)
    start = b'{"messages": ['
    writer.write(CHAT_HEAD.format(padding="x", length=len(start) + 2).encode() + start)
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 1.0 + SLACK_S)
        assert head.startswith(b"HTTP/1.1 408 ")
        writer.write(b"]}" + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        rest = await read_until_closed(reader, LINGER_S + SLACK_S)
    finally:
        writer.close()
    assert b"HTTP/1.1 200" not in rest  # closed after the 408, nothing else served


async def test_a_body_trickled_past_the_deadline_is_cut_too(serve: StartGateway) -> None:
    """Bytes that keep coming do not extend the body deadline: it bounds the whole body."""
    gateway = await serve(body_timeout_s=1.0)
    reader, writer = await connect(gateway.port)
    writer.write(CHAT_HEAD.format(padding="x", length=1000).encode())
    sent = time.monotonic()

    async def trickle() -> None:
        while True:
            writer.write(b" ")
            await asyncio.sleep(0.2)

    sender = asyncio.create_task(trickle())
    try:
        raw = await read_until_closed(reader, 1.0 + LINGER_S + SLACK_S)
    finally:
        sender.cancel()
        writer.close()
    assert time.monotonic() - sent >= 0.9
    assert parse(raw)[0] == 408


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    serve: StartGateway,
) -> None:
    gateway = await serve(idle_timeout_s=1.0, header_timeout_s=30.0)
    reader, writer = await connect(gateway.port)
    try:
        writer.write(HEALTHZ)
        status, headers, _ = await read_response(reader)
        answered = time.monotonic()
        assert status == 200 and headers.get("connection", "keep-alive") != "close"
        assert await read_until_closed(reader, 1.0 + SLACK_S) == b""
    finally:
        writer.close()
    assert time.monotonic() - answered >= 0.9
    await eventually(lambda: gateway.runner.gate.open == 0)


async def test_a_request_arriving_on_time_is_not_cut_by_the_idle_deadline(
    serve: StartGateway,
) -> None:
    """Its first byte comes before the idle deadline, the rest after it: it is served."""
    gateway = await serve(idle_timeout_s=1.0, header_timeout_s=3.0)
    reader, writer = await connect(gateway.port)
    try:
        writer.write(HEALTHZ)
        assert (await read_response(reader))[0] == 200
        await asyncio.sleep(0.5)
        for byte in HEALTHZ:  # over 1.6 s: well past the idle deadline, within the header one
            writer.write(bytes([byte]))
            await asyncio.sleep(1.6 / len(HEALTHZ))
        status, _, body = await read_response(reader)
    finally:
        writer.close()
    assert status == 200 and json.loads(body) == {"status": "ok"}


async def test_connections_over_the_cap_are_refused_while_healthz_stays_fast(
    serve: StartGateway,
) -> None:
    gateway = await serve(max_connections=20, header_timeout_s=60.0, idle_timeout_s=60.0)
    held = [await connect(gateway.port) for _ in range(20)]
    try:
        await eventually(lambda: gateway.runner.gate.open == 20)

        # The 21st: a 503 error body, closed at once.
        reader, writer = await connect(gateway.port)
        started = time.monotonic()
        raw = await read_until_closed(reader, 2.0)
        writer.close()
        assert time.monotonic() - started < 1.0
        status, headers, body = parse(raw)
        assert status == 503
        assert headers["retry-after"] == "1"
        assert body["error"]["code"] == "too_many_connections"  # type: ignore[index]
        assert gateway.runner.gate.refused == 1

        # An open connection is served as fast as ever.
        first_reader, first_writer = held[0]
        started = time.monotonic()
        first_writer.write(HEALTHZ)
        assert (await read_response(first_reader))[0] == 200
        assert time.monotonic() - started < 1.0

        # A slot freed is a slot taken.
        _, last_writer = held.pop()
        last_writer.close()
        await eventually(lambda: gateway.runner.gate.open == 19)
        reader, writer = await connect(gateway.port)
        held.append((reader, writer))
        started = time.monotonic()
        writer.write(HEALTHZ)
        assert (await read_response(reader))[0] == 200
        assert time.monotonic() - started < 1.0
    finally:
        for _, writer in held:
            writer.close()
    await eventually(lambda: gateway.runner.gate.open == 0)


async def test_serve_applies_the_environment_to_connections(tmp_path: Path) -> None:
    """``python -m gateway serve`` with GATEWAY_HEADER_TIMEOUT_S and GATEWAY_MAX_CONNECTIONS."""
    port = unused_port()
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml([("http://127.0.0.1:9", "edge-model")], []))
    env = {
        **os.environ,
        "GATEWAY_PORT": str(port),
        "GATEWAY_POLICY": str(policy),
        "GATEWAY_HEADER_TIMEOUT_S": "1",
        "GATEWAY_MAX_CONNECTIONS": "1",
    }
    process = subprocess.Popen(  # noqa: ASYNC220 (started once, stopped below)
        [sys.executable, "-m", "gateway", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent(),
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                reader, writer = await connect(port)
                break
            except OSError:
                assert process.poll() is None, "the gateway exited at start-up"
                assert time.monotonic() < deadline, "the gateway never listened"
                await asyncio.sleep(0.1)
        try:
            opened = time.monotonic()
            second_reader, second_writer = await connect(port)  # over the cap of 1
            assert parse(await read_until_closed(second_reader, 2.0))[0] == 503
            second_writer.close()
            assert await read_until_closed(reader, 1.0 + SLACK_S) == b""  # header deadline
            assert time.monotonic() - opened >= 0.9
        finally:
            writer.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GATEWAY_HEADER_TIMEOUT_S", "soon", "must be a number of seconds"),
        ("GATEWAY_BODY_TIMEOUT_S", "0", "more than 0"),
        ("GATEWAY_IDLE_TIMEOUT_S", "nan", "more than 0"),
        ("GATEWAY_IDLE_TIMEOUT_S", "inf", "more than 0"),
        ("GATEWAY_MAX_CONNECTIONS", "lots", "must be an integer"),
        ("GATEWAY_MAX_CONNECTIONS", "0", "at least 1"),
    ],
)
def test_bad_connection_settings_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        settings_from_env({variable: value})
    assert variable in str(caught.value)


def test_connection_settings_from_the_environment() -> None:
    assert settings_from_env({}).connections == ConnectionLimits()
    limits = settings_from_env(
        {
            "GATEWAY_HEADER_TIMEOUT_S": "5",
            "GATEWAY_BODY_TIMEOUT_S": "12.5",
            "GATEWAY_IDLE_TIMEOUT_S": "90",
            "GATEWAY_MAX_CONNECTIONS": "64",
        }
    ).connections
    assert limits == ConnectionLimits(
        header_timeout_s=5, body_timeout_s=12.5, idle_timeout_s=90, max_connections=64
    )
