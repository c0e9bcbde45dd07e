"""The limiter's Redis client against a real redis-server: replies and errors as redis-py
gives them, many callers pipelined on one connection in order, the NOSCRIPT fallback,
timeouts and lost connections (fail what is pending, reconnect on the next call), AUTH,
SELECT, unix sockets and TLS, and URLs read as redis-py reads them."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import (
    AuthenticationError,
    ConnectionError,
    NoScriptError,
    ResponseError,
    TimeoutError,
)

from gateway.accounts.redis_pipe import Address, RedisPipe, script_sha
from gateway.redis_client import close_client, redis_client
from scripts.stack.processes import die_with_parent
from tests.fixtures.redis import RedisServer, free_port
from tests.helpers import eventually_value

pytestmark = pytest.mark.redis


@pytest.fixture
async def pipe(redis_server: RedisServer) -> AsyncIterator[RedisPipe]:
    pipe = RedisPipe.from_url(redis_server.url, timeout_s=2.0)
    yield pipe
    await pipe.aclose()


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A redis-py client beside the pipe, to set the server up and look at it."""
    client = redis_client(redis_server.url, max_connections=2, timeout_s=5.0)
    yield client  # type: ignore[misc]
    await close_client(client)


async def clients_connected(pipe: RedisPipe) -> int:
    listing = await pipe.call("CLIENT", "LIST")
    assert isinstance(listing, bytes)
    return len(listing.splitlines())


async def test_replies_come_back_as_redis_py_parses_them(pipe: RedisPipe) -> None:
    assert await pipe.call("SET", "text", "héllo") == b"OK"
    assert await pipe.call("GET", "text") == "héllo".encode()
    assert await pipe.call("GET", "missing") is None
    assert await pipe.call("INCRBY", "count", -5) == -5
    assert await pipe.call("SET", b"raw\x00key", b"\xff\x00") == b"OK"
    assert await pipe.call("GET", b"raw\x00key") == b"\xff\x00"
    assert await pipe.call("EVAL", "return {1, 'two', {3}, false}", 0) == [1, b"two", [3], None]
    with pytest.raises(ResponseError, match="not an integer"):
        await pipe.call("INCR", "text")
    with pytest.raises(ResponseError, match="unknown command"):
        await pipe.call("NO-SUCH-COMMAND")
    assert await pipe.call("PING") == b"PONG"  # an error reply leaves the connection usable


async def test_concurrent_callers_share_one_connection_in_the_order_they_sent(
    pipe: RedisPipe,
) -> None:
    ids = await asyncio.gather(*(pipe.call("CLIENT", "ID") for _ in range(20)))
    assert len(set(ids)) == 1  # the first callers shared one connect
    values = await asyncio.gather(*(pipe.call("INCR", "n") for _ in range(200)))
    assert values == list(range(1, 201))
    assert await pipe.call("CLIENT", "ID") == ids[0]
    assert await clients_connected(pipe) == 1


async def test_a_cancelled_caller_does_not_shift_the_replies(pipe: RedisPipe) -> None:
    await pipe.call("PING")
    gone = asyncio.create_task(pipe.call("ECHO", "first"))
    await asyncio.sleep(0)  # sent, its reply still to come
    gone.cancel()
    assert await pipe.call("ECHO", "second") == b"second"
    assert gone.cancelled()


async def test_evalsha_sends_the_script_again_after_script_flush(pipe: RedisPipe) -> None:
    text = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
    sha = script_sha(text)
    with pytest.raises(NoScriptError):
        await pipe.call("EVALSHA", sha, 1, "k", 1)
    assert await pipe.evalsha(sha, text, ["k"], [2]) == 2
    assert await pipe.call("SCRIPT", "EXISTS", sha) == [1]  # EVAL cached it
    assert await pipe.evalsha(sha, text, ["k"], [3]) == 5
    await pipe.call("SCRIPT", "FLUSH")
    assert await pipe.evalsha(sha, text, ["k"], [4]) == 9


async def test_a_timeout_fails_every_pending_call_and_the_next_call_reconnects(
    redis_server: RedisServer,
) -> None:
    pipe = RedisPipe.from_url(redis_server.url, timeout_s=0.3)
    try:
        first_id = await pipe.call("CLIENT", "ID")
        redis_server.pause()
        started = time.monotonic()
        try:
            async with asyncio.timeout(5):  # the pipe's own timeout must come well before
                outcomes = await asyncio.gather(
                    *(pipe.call("INCR", "n") for _ in range(5)), return_exceptions=True
                )
        finally:
            redis_server.resume()
        elapsed = time.monotonic() - started
        assert all(isinstance(outcome, TimeoutError) for outcome in outcomes), outcomes
        assert 0.25 <= elapsed < 1.5, elapsed
        assert await pipe.call("CLIENT", "ID") != first_id  # a fresh connection
        # The old one is closed: the replies it still owes can never be mistaken for others.
        await eventually_value(
            lambda: clients_connected(pipe), lambda n: n == 1, what="one connection left"
        )
    finally:
        await pipe.aclose()


async def test_connecting_is_bounded_by_the_timeout_too(redis_server: RedisServer) -> None:
    pipe = RedisPipe.from_url(redis_server.url.replace("/0", "/1"), timeout_s=0.3)
    redis_server.pause()  # connects (the kernel accepts), but SELECT gets no answer
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="connecting"):
            await pipe.call("PING")
        assert time.monotonic() - started < 1.5
    finally:
        redis_server.resume()
    assert await pipe.call("PING") == b"PONG"
    await pipe.aclose()


async def test_a_lost_server_fails_pending_calls_and_a_restarted_one_is_used_again(
    pipe: RedisPipe, redis_server: RedisServer
) -> None:
    await pipe.call("PING")
    redis_server.pause()
    pending = [asyncio.create_task(pipe.call("INCR", "n")) for _ in range(3)]
    await asyncio.sleep(0)  # queued on the connection
    assert redis_server.process is not None
    os.kill(redis_server.process.pid, signal.SIGKILL)
    async with asyncio.timeout(5):
        outcomes = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes), outcomes
    redis_server.stop()  # reaps it
    with pytest.raises(ConnectionError, match="connecting"):
        await pipe.call("PING")  # refused
    redis_server.start()
    assert await pipe.call("INCR", "n") == 1  # a new, empty server


async def test_a_closed_pipe_refuses_calls(pipe: RedisPipe) -> None:
    await pipe.call("PING")
    await pipe.aclose()
    with pytest.raises(ConnectionError, match="closed"):
        await pipe.call("PING")


async def test_password_user_and_database_from_the_url(
    redis_server: RedisServer, admin: aioredis.Redis
) -> None:
    password = "p@ss:w/rd %"
    await admin.acl_setuser(
        "alice", enabled=True, passwords=[f"+{password}"], keys="*", commands=["+@all"]
    )
    await admin.config_set("requirepass", "s3cret")
    base = f"127.0.0.1:{redis_server.port}"
    default = RedisPipe.from_url(f"redis://:s3cret@{base}/3", timeout_s=2.0)
    alice = RedisPipe.from_url(f"redis://alice:{quote(password, safe='')}@{base}", timeout_s=2.0)
    wrong = RedisPipe.from_url(f"redis://:wrong@{base}", timeout_s=2.0)
    none = RedisPipe.from_url(f"redis://{base}", timeout_s=2.0)
    try:
        assert await default.call("ACL", "WHOAMI") == b"default"
        assert await default.call("SET", "in-db-3", "yes") == b"OK"
        assert await alice.call("ACL", "WHOAMI") == b"alice"
        assert await alice.call("GET", "in-db-3") is None  # alice is on db 0
        assert await alice.call("SELECT", 3) == b"OK"
        assert await alice.call("GET", "in-db-3") == b"yes"
        with pytest.raises(AuthenticationError):
            await wrong.call("PING")
        with pytest.raises(AuthenticationError):  # NOAUTH, as redis-py raises it
            await none.call("PING")
    finally:
        for pipe in (default, alice, wrong, none):
            await pipe.aclose()


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A redis-server on a unix socket only (a short path: sun_path has 108 bytes)."""
    workdir = Path(tempfile.mkdtemp(prefix="rp-"))
    path = workdir / "redis.sock"
    process = subprocess.Popen(
        [_redis_binary(), "--port", "0", "--unixsocket", str(path), "--save", "",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        preexec_fn=die_with_parent(signal.SIGKILL),
    )  # fmt: skip
    try:
        yield path
    finally:
        process.terminate()
        process.wait(timeout=5)
        shutil.rmtree(workdir, ignore_errors=True)


async def test_a_unix_socket_url(socket_path: Path) -> None:
    pipe = RedisPipe.from_url(f"unix://{socket_path}?db=2", timeout_s=2.0)
    try:

        async def ping() -> object:
            try:
                return await pipe.call("PING")
            except ConnectionError:  # the server is still starting
                return None

        await eventually_value(ping, lambda reply: reply == b"PONG", what="the socket served")
        info = await pipe.call("CLIENT", "INFO")
        assert isinstance(info, bytes) and b" db=2 " in info
    finally:
        await pipe.aclose()


TLS_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "tls"


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server speaking TLS only, with the self-signed test certificate for
    localhost that ships in tests/fixtures/tls (no openssl command needed)."""
    cert, key = TLS_DIR / "localhost-cert.pem", TLS_DIR / "localhost-key.pem"
    port = free_port()
    process = subprocess.Popen(
        [_redis_binary(), "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
         "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
         "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        preexec_fn=die_with_parent(signal.SIGKILL),
    )  # fmt: skip
    try:
        yield port, cert
    finally:
        process.terminate()
        process.wait(timeout=5)


async def test_tls_verifies_the_certificate_as_redis_py_does(tls_server: tuple[int, Path]) -> None:
    port, cert = tls_server
    trusted = RedisPipe.from_url(f"rediss://localhost:{port}/0?ssl_ca_certs={cert}", timeout_s=2.0)
    untrusted = RedisPipe.from_url(f"rediss://localhost:{port}/0", timeout_s=2.0)
    try:

        async def ping() -> object:
            try:
                return await trusted.call("PING")
            except ConnectionError as exc:
                return exc  # refused while the server starts

        await eventually_value(ping, lambda reply: reply == b"PONG", what="a TLS PING")
        with pytest.raises(ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusted.call("PING")
    finally:
        await trusted.aclose()
        await untrusted.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://127.0.0.1:6380/4",
        "redis://user:p%40ss@redis.internal:7000/",
        "redis://:only-password@host/2?db=5",
        "REDIS://host:1/x",
        "rediss://secure.example:6390/1",
        "unix:///run/redis.sock?db=3",
        "unix://bob:pw@/tmp/r.sock",
    ],
)
def test_urls_are_read_as_redis_py_reads_them(url: str) -> None:
    theirs = parse_url(url)
    ours = Address.parse(url)
    assert ours.username == theirs.get("username") and ours.password == theirs.get("password")
    assert ours.db == theirs.get("db", 0)
    if theirs.get("connection_class") is UnixDomainSocketConnection:
        assert ours.path == theirs["path"]
    else:
        assert (ours.path, ours.host, ours.port) == (
            None,
            theirs.get("host", "localhost"),
            theirs.get("port", 6379),
        )
        assert (ours.ssl is not None) == (theirs.get("connection_class") is SSLConnection)


def test_tls_settings_in_the_url() -> None:
    strict = Address.parse("rediss://host")
    assert strict.ssl is not None
    assert strict.ssl.verify_mode == ssl.CERT_REQUIRED and strict.ssl.check_hostname
    lax = Address.parse("rediss://host?ssl_cert_reqs=none")
    assert lax.ssl is not None
    assert lax.ssl.verify_mode == ssl.CERT_NONE and not lax.ssl.check_hostname
    with pytest.raises(ValueError, match="schemes"):
        Address.parse("http://host")


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed"
    return binary
