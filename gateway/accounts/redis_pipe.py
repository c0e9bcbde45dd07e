"""One Redis connection shared by every caller, with automatic pipelining: the client
for the one call each admission makes (:mod:`gateway.accounts.limiter`).

redis-py spends more CPU around a call than Redis spends running it (a pooled connection
taken and given back under a lock, a retry wrapper, a read under its own timeout). Here a
call is: pack the command (hiredis, in C), queue a future, and at the end of the event
loop's turn write what every caller queued in it, in one go; replies come back in the
order the commands were sent, so :meth:`_Connection.data_received` resolves the queue
front to back. Concurrent callers share the connection and are pipelined for free.

One timer per connection bounds every call: it is armed at the oldest call's deadline,
and the oldest call is always the one at the front. A call that times out leaves a reply
owed that would be taken for the next call's, so the connection is dropped, every
pending call fails with redis-py's ``TimeoutError``, and the next call reconnects
(lazily, one connect shared by whoever calls meanwhile). A lost connection fails what
is pending with ``ConnectionError``. Error replies raise what redis-py raises
(``ResponseError``, ``NoScriptError``, ...), so callers catch ``RedisError`` as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias, cast
from urllib.parse import parse_qs, unquote, urlparse

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg: TypeAlias = bytes | str | int
Reply: TypeAlias = int | bytes | list["Reply"] | None
_CERT_REQS: Final = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def script_sha(text: str) -> str:
    """The SHA1 Redis knows a Lua script by (EVALSHA)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Address:
    """Where and how to connect: a Redis URL, read by redis-py's rules."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    """A unix socket (``unix://``); host and port unused."""
    username: str | None = None
    password: str | None = None
    db: int = 0
    ssl: ssl.SSLContext | None = None

    @classmethod
    def parse(cls, url: str) -> Address:
        """``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS, certificate
        and host name verified unless ``?ssl_cert_reqs=none``), ``unix://[[user]:password@]
        /path[?db=n]``; as :func:`redis.asyncio.connection.parse_url` reads them."""
        if not url.lower().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                "Redis URL must specify one of the following schemes (redis://, rediss://, unix://)"
            )
        parsed = urlparse(url)
        query = {name: values[0] for name, values in parse_qs(parsed.query).items()}
        username = unquote(parsed.username) if parsed.username else None
        password = unquote(parsed.password) if parsed.password else None
        db = int(query["db"]) if "db" in query else None
        if parsed.scheme == "unix":
            return cls(path=unquote(parsed.path), username=username, password=password, db=db or 0)
        if db is None and parsed.path:
            with contextlib.suppress(ValueError):
                db = int(unquote(parsed.path).replace("/", ""))
        return cls(
            host=unquote(parsed.hostname) if parsed.hostname else "localhost",
            port=parsed.port if parsed.port is not None else 6379,
            username=username,
            password=password,
            db=db or 0,
            ssl=_ssl_context(query) if parsed.scheme == "rediss" else None,
        )

    def __str__(self) -> str:
        return self.path if self.path is not None else f"{self.host}:{self.port}"


def _ssl_context(query: dict[str, str]) -> ssl.SSLContext:
    """redis-py's default for ``rediss://``: verify the certificate and the host name."""
    context = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
    mode = _CERT_REQS[query.get("ssl_cert_reqs", "required").lower()]
    check = query.get("ssl_check_hostname", "true").lower() not in {"0", "f", "false", "n", "no"}
    context.check_hostname = check and mode != ssl.CERT_NONE
    context.verify_mode = mode
    return context


class RedisPipe:
    """Calls to one Redis server over one connection, each bounded by ``timeout_s``."""

    def __init__(self, address: Address, *, timeout_s: float) -> None:
        self._address = address
        self._timeout_s = timeout_s
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float) -> RedisPipe:
        """A pipe to the server at ``url`` (not connected until the first call)."""
        return cls(Address.parse(url), timeout_s=timeout_s)

    async def call(self, *args: Arg) -> Reply:
        """Run one command; raises redis-py's exceptions (all ``RedisError``)."""
        connection = self._connection
        if connection is None or connection.lost:
            connection = await self._connect()
        return await connection.send(args)

    async def evalsha(self, sha: str, text: str, keys: Sequence[Arg], args: Sequence[Arg]) -> Reply:
        """Run the Lua script ``text`` (known to Redis as ``sha``); sent whole only when
        Redis does not have it (after a restart or SCRIPT FLUSH; EVAL caches it again)."""
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.call("EVAL", text, len(keys), *keys, *args)

    async def aclose(self) -> None:
        """Fail what is pending, close the connection; later calls raise ConnectionError."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.drop(RedisConnectionError("Connection closed by the client."), abort=False)
            with contextlib.suppress(TimeoutError):  # the builtin: asyncio.timeout's
                async with asyncio.timeout(self._timeout_s):
                    await connection.closed

    async def _connect(self) -> _Connection:
        if self._closed:
            raise RedisConnectionError("This Redis pipe is closed.")
        if self._connecting is None:
            self._connecting = asyncio.create_task(self._open())
            self._connecting.add_done_callback(self._connected)
        # Shielded: one caller giving up must not cancel the connect the others wait on.
        return await asyncio.shield(self._connecting)

    def _connected(self, task: asyncio.Task[_Connection]) -> None:
        self._connecting = None
        if task.cancelled() or task.exception() is not None:
            return  # (the exception is retrieved: raised to the callers, if any are left)
        if self._closed:  # closed while connecting
            task.result().drop(RedisConnectionError("Connection closed by the client."))
        else:
            self._connection = task.result()

    async def _open(self) -> _Connection:
        """Connect, AUTH and SELECT, all within ``timeout_s``."""
        address, loop = self._address, asyncio.get_running_loop()
        connection = _Connection(address, self._timeout_s)
        opened = False
        try:
            async with asyncio.timeout(self._timeout_s):
                if address.path is not None:
                    await loop.create_unix_connection(lambda: connection, address.path)
                else:
                    await loop.create_connection(
                        lambda: connection,
                        address.host,
                        address.port,
                        ssl=address.ssl,
                        server_hostname=address.host if address.ssl is not None else None,
                    )
                if address.password is not None:
                    user = (address.username,) if address.username is not None else ()
                    await connection.send(("AUTH", *user, address.password))
                if address.db:
                    await connection.send(("SELECT", address.db))
            opened = True
        except (RedisTimeoutError, TimeoutError) as exc:  # the builtin: asyncio.timeout's
            raise RedisTimeoutError(f"Timeout connecting to {address}") from exc
        except OSError as exc:
            raise RedisConnectionError(f"Error connecting to {address}. {exc}") from exc
        finally:
            if not opened:  # failed, timed out or cancelled: nothing may keep it open
                connection.drop(RedisConnectionError(f"Connecting to {address} failed."))
        return connection


class _Connection(asyncio.Protocol):
    """One connection: commands written as they come, replies matched to them in order."""

    def __init__(self, address: Address, timeout_s: float) -> None:
        self._address = address
        self._timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(
            protocolError=InvalidResponse, replyError=BaseParser.parse_error
        )
        self._pending: deque[tuple[asyncio.Future[Reply], float]] = deque()
        """Calls awaiting a reply, oldest first, with their deadlines (loop time)."""
        self._unsent: list[bytes] = []
        """Commands sent in this turn of the event loop: written at its end, in one go."""
        self._timer: asyncio.TimerHandle | None = None
        self.lost = False
        self.closed: asyncio.Future[None] = self._loop.create_future()

    def send(self, args: tuple[Arg, ...]) -> asyncio.Future[Reply]:
        """Write one command; the future gets its reply (or its error)."""
        future: asyncio.Future[Reply] = self._loop.create_future()
        if self.lost or self._transport is None:
            future.set_exception(RedisConnectionError(f"Connection to {self._address} lost."))
            return future
        if not self._unsent:
            self._loop.call_soon(self._flush)
        self._unsent.append(cast(bytes, hiredis.pack_command(args)))  # type: ignore[arg-type]
        deadline = self._loop.time() + self._timeout_s
        self._pending.append((future, deadline))
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._expire)
        return future

    def _flush(self) -> None:
        # One write (one system call) for all callers of this turn: at 16 concurrent
        # callers, half the CPU per call of a write each (bench/redis_call.py).
        data = b"".join(self._unsent)
        self._unsent.clear()
        if not self.lost and self._transport is not None:
            self._transport.write(data)

    def drop(self, error: RedisError, *, abort: bool = True) -> None:
        """Close the connection and fail every pending call with (a copy of) ``error``."""
        self.lost = True
        self._unsent.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, deque()
        for future, _ in pending:
            if not future.done():
                future.set_exception(type(error)(*error.args))
        if self._transport is not None:
            if abort:
                self._transport.abort()
            else:
                self._transport.close()
        elif not self.closed.done():
            self.closed.set_result(None)

    def _expire(self) -> None:
        """The timer: at the oldest pending call's deadline, fail them all or re-arm."""
        self._timer = None
        if not self._pending:
            return
        deadline = self._pending[0][1]
        if deadline > self._loop.time():
            self._timer = self._loop.call_at(deadline, self._expire)
            return
        self.drop(RedisTimeoutError(f"Timeout reading from {self._address}"))

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader, pending = self._reader, self._pending
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                future = pending.popleft()[0]
                if future.done():  # its caller gave up (cancelled); the reply is its own
                    continue
                if isinstance(reply, RedisError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (InvalidResponse, IndexError) as exc:  # garbled, or a reply nobody asked for
            self.drop(RedisConnectionError(f"Protocol error from {self._address}: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        reason = f": {exc}" if exc is not None else ""
        self.drop(RedisConnectionError(f"Connection to {self._address} closed by server{reason}."))


__all__ = ["Address", "Arg", "RedisPipe", "Reply", "script_sha"]
