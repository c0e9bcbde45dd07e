"""Kept-alive connections to the nodes, and the requests sent on them."""

from __future__ import annotations

import asyncio
import base64
import collections
import functools
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import yarl

from gateway.upstream.http1.connection import Connection, ResponseHead
from gateway.upstream.http1.errors import ConnectFailed, ConnectionLost, InvalidRequestHeader
from gateway.upstream.loop_timeout import LoopTimeout

USER_AGENT = "hybrid-gateway"

_FIXED_HEADERS = (
    f"User-Agent: {USER_AGENT}\r\nAccept: */*\r\n"
    # Plain answers: the gateway parses every answer, and compressing a token stream on a
    # local network costs both ends CPU for nothing (a node that compresses all the same
    # is decompressed).
    "Accept-Encoding: identity\r\n"
)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a node's URL points: what a connection and a request line need."""

    host: str
    port: int
    tls: bool
    path_prefix: str
    """The URL's path before the request's own (``""`` for a server's root)."""
    fixed_headers: str
    """``Host`` (and ``Authorization`` from the URL's user and password), as sent."""


@functools.lru_cache(maxsize=1024)
def origin_of(url: str) -> Origin:
    """The origin of an ``http://`` or ``https://`` URL (a node's, checked when the
    policy was loaded)."""
    parsed = yarl.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.raw_host or parsed.port is None:
        raise ValueError(f"not an http(s) URL with a host: {url!r}")
    headers = f"Host: {parsed.host_port_subcomponent}\r\n"
    if parsed.user is not None:
        credentials = f"{parsed.user}:{parsed.password or ''}".encode()
        headers += f"Authorization: Basic {base64.b64encode(credentials).decode()}\r\n"
    return Origin(
        host=parsed.raw_host,
        port=parsed.port,
        tls=parsed.scheme == "https",
        path_prefix=parsed.raw_path.rstrip("/"),
        fixed_headers=headers + _FIXED_HEADERS,
    )


class Response:
    """A node's response whose head has arrived; :attr:`content` is its body. Hand the
    connection back with :meth:`release` (reused if the body was read whole) or
    :meth:`close`; either may be called more than once."""

    __slots__ = ("_connection", "_connections", "_origin", "content", "headers", "status")

    def __init__(
        self, connections: Connections, origin: Origin, connection: Connection, head: ResponseHead
    ) -> None:
        self._connections = connections
        self._origin = origin
        self._connection: Connection | None = connection
        self.status = head.status
        self.headers = head.headers
        self.content = head.body

    async def read(self) -> bytes:
        """The whole body; the connection goes back to the pool."""
        try:
            return await self.content.read()
        finally:
            self.release()

    def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._connections.put_back(self._origin, connection)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


class Connections:
    """Connections to the nodes, kept alive between requests: at most ``limit`` open at
    once; one idle for ``keepalive_s`` is not reused, and is closed within twice that. One
    request per connection at a time; no redirects, proxies or cookies (a node is called
    directly)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        limit: int,
        keepalive_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._loop = loop
        self._slots = asyncio.Semaphore(limit)
        self._waiting = 0
        """Calls waiting for a slot (every one taken): a freed connection is closed for them."""
        self._keepalive_s = keepalive_s
        self._ssl_context = ssl_context
        self._idle: dict[Origin, collections.deque[Connection]] = {}
        self._open: set[Connection] = set()
        self._sweep: asyncio.TimerHandle | None = None
        """Closes the idle connections past their keep-alive, while there are any."""

    async def request(
        self,
        method: str,
        url: str,
        path: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, str],
        connect_timeout_s: float,
    ) -> Response:
        """Send ``method`` ``url`` + ``path``; returns once the response's head arrived.
        ``headers`` must not set the framing (``Host``, ``Content-Length``,
        ``Transfer-Encoding``). Raises :class:`~.errors.HttpError` for transport
        failures and :class:`TimeoutError` when connecting takes ``connect_timeout_s``."""
        origin = origin_of(url)
        request = _request_bytes(method, origin, path, body, headers)
        connection = self._take_idle(origin)
        if connection is None:
            connection = await self._connect(origin, connect_timeout_s)
        try:
            head = await connection.send(request)
        except BaseException:
            connection.close()
            raise
        return Response(self, origin, connection, head)

    def put_back(self, origin: Origin, connection: Connection) -> None:
        """A response's connection, free again: kept for the next request if reusable."""
        if not connection.reusable or self._waiting:
            connection.close()  # a caller waiting for a slot gets this one's
            return
        now = self._loop.time()
        connection.idle_since = now
        idle = self._idle.get(origin)
        if idle is None:
            idle = self._idle[origin] = collections.deque()
        idle.append(connection)
        if self._sweep is None:
            self._sweep = self._loop.call_later(self._keepalive_s, self._close_expired)

    async def close(self) -> None:
        """Close every connection (the gateway is stopping)."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
        await asyncio.sleep(0)  # the transports' close callbacks run

    def _take_idle(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()  # the most recent: the least likely to be closed
            if not connection.is_open():  # the node closed it meanwhile
                continue
            if self._loop.time() - connection.idle_since > self._keepalive_s:
                # This one is the newest: all the others are older still.
                connection.close()
                while idle:
                    idle.pop().close()
                return None
            return connection
        return None

    def _close_expired(self) -> None:
        """Close the idle connections past their keep-alive (the oldest are on the left);
        again in a keep-alive's time while any are left."""
        self._sweep = None
        expired_before = self._loop.time() - self._keepalive_s
        for idle in self._idle.values():
            while idle and (idle[0].idle_since <= expired_before or not idle[0].is_open()):
                idle.popleft().close()
        if any(self._idle.values()):
            self._sweep = self._loop.call_later(self._keepalive_s, self._close_expired)

    async def _connect(self, origin: Origin, timeout_s: float) -> Connection:
        if self._slots.locked():
            self._close_oldest_idle()  # its slot comes back once it has closed
            self._waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
        else:
            await self._slots.acquire()
        made: list[Connection] = []

        def connection() -> Connection:
            # From here the slot is the connection's: given back when it closes.
            made.append(Connection(self._loop, self._closed))
            self._open.add(made[0])
            return made[0]

        try:
            async with LoopTimeout(self._loop, self._loop.time() + timeout_s):
                await self._loop.create_connection(
                    connection, origin.host, origin.port, ssl=self._tls() if origin.tls else None
                )
            if not made[0].is_open():
                raise ConnectionLost("the node closed the connection as it was opened")
        except BaseException as exc:
            if made:
                made[0].close()
                self._closed(made[0])
            else:
                self._slots.release()
            if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
                raise ConnectFailed(exc) from exc  # refused, unreachable, DNS, TLS
            raise
        return made[0]

    def _closed(self, connection: Connection) -> None:
        """Give a closed (or failed) connection's slot back, once."""
        if connection in self._open:
            self._open.discard(connection)
            self._slots.release()

    def _close_oldest_idle(self) -> None:
        oldest: collections.deque[Connection] | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest[0].idle_since):
                oldest = idle
        if oldest is not None:
            oldest.popleft().close()

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()  # certificates verified
        return self._ssl_context


def _request_bytes(
    method: str, origin: Origin, path: str, body: bytes, headers: Mapping[str, str]
) -> bytes:
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    count = len(headers)
    # Each field ends in the one CRLF written here: a CR, LF or NUL of a name or value
    # would end the head early or smuggle a field in.
    if fields.count("\n") != count or fields.count("\r") != count or "\0" in fields:
        raise InvalidRequestHeader("a request header holds a CR, LF or NUL character")
    head = (
        f"{method} {origin.path_prefix}{path} HTTP/1.1\r\n{origin.fixed_headers}"
        f"Content-Length: {len(body)}\r\n{fields}\r\n"
    )
    return head.encode("utf-8") + body


__all__ = ["USER_AGENT", "Connections", "Origin", "Response", "origin_of"]
