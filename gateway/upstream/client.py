"""Calls to one node, with every transport and HTTP failure translated into gateway errors.

This module is the only place that catches the HTTP client's exceptions
(:mod:`gateway.upstream.http1`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from gateway.errors import (
    UpstreamClientError,
    UpstreamConnectError,
    UpstreamConnectionReset,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamStatusError,
    UpstreamTimeout,
)
from gateway.policy.fallback import Timeouts
from gateway.telemetry import NO_ATTEMPT, AttemptSpan
from gateway.upstream.chunks import Event, has_output, parse_event
from gateway.upstream.http1 import (
    ConnectFailed,
    ConnectionLost,
    Connections,
    HttpError,
    Response,
)
from gateway.upstream.loop_timeout import LoopTimeout
from gateway.upstream.pool import Node
from gateway.upstream.retry import parse_retry_after
from gateway.upstream.sse import DONE, SseReader
from hybrid_common.protocol import ErrorBody, error_body

CHAT_PATH = "/v1/chat/completions"


@dataclass(slots=True)
class UpstreamStream:
    """An open streaming response whose first token has already arrived.

    ``head`` holds the events up to and including the first one that carries output
    (a role-only opening chunk comes before it), already parsed; :meth:`next_data`
    reads the others' payloads.
    """

    node: Node
    head: tuple[Event, ...]
    events: SseReader
    response: Response
    attempt: AttemptSpan = NO_ATTEMPT
    """This attempt's span; whoever reads the stream records how it ended."""

    def take_arrived(self) -> list[bytes]:
        """The payloads of every event that has arrived already (maybe none)."""
        return self.events.take_arrived()

    async def next_data(self, *, deadline: float | None = None) -> bytes | None:
        """The next event's payload (``DONE`` included); None at the end of the body.
        Raises :class:`UpstreamError` when the transport fails or the node stalls, and
        :class:`~gateway.upstream.sse.DeadlineReached` at ``deadline`` (event-loop time)."""
        try:
            return await self.events.next(deadline=deadline)
        except (TimeoutError, HttpError) as exc:
            raise translated(self.node, "stream", exc) from exc

    def close(self) -> None:
        """Stop reading: mid-answer, only closing the connection stops the node."""
        if self.response.content.at_eof():
            self.response.release()  # the whole body was read: the connection is reusable
        else:
            self.response.close()
        self.attempt.end()  # a backstop: ending an ended span does nothing

    def finish(self) -> None:
        """The answer is whole: keep the connection for the next request once the node
        has sent the rest of the body (``[DONE]`` and its end), which is read in the
        background for at most :data:`DRAIN_S`. A new connection per request costs the
        node and the gateway far more than reading a few bytes."""
        self.attempt.end()
        if self.response.content.at_eof():
            self.response.release()
            return
        loop = self.events.loop
        task = loop.create_task(_drain(self.response, loop))
        _DRAINING.add(task)  # a task nothing refers to may be collected before it runs
        task.add_done_callback(_DRAINING.discard)


DRAIN_S = 0.25
"""How long a finished answer's remaining bytes may take before its connection is closed
instead (a node that sends its usage but holds the body open)."""

_DRAINING: set[asyncio.Task[None]] = set()


async def _drain(response: Response, loop: asyncio.AbstractEventLoop) -> None:
    try:
        async with LoopTimeout(loop, loop.time() + DRAIN_S):
            while await response.content.readany():
                pass
    except (TimeoutError, HttpError):
        response.close()
        return
    except asyncio.CancelledError:  # the gateway is stopping
        response.close()
        raise
    response.release()


@contextmanager
def translate_errors(node: Node, phase: str) -> Iterator[None]:
    """Turn transport failures of ``phase`` on ``node`` into :class:`UpstreamError`."""
    try:
        yield
    except (TimeoutError, HttpError) as exc:
        raise translated(node, phase, exc) from exc


def translated(node: Node, phase: str, exc: TimeoutError | HttpError) -> UpstreamError:
    """The gateway's error for a transport failure of ``phase`` on ``node``."""
    where = f"{node.tier} node {node.name} ({phase})"
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"{where}: timed out")
    if isinstance(exc, ConnectFailed):
        return UpstreamConnectError(f"{where}: cannot connect: {exc.os_error}")
    if isinstance(exc, ConnectionLost):  # closed before the answer, or in its body
        return UpstreamConnectionReset(f"{where}: connection lost: {exc}")
    return UpstreamProtocolError(f"{where}: {type(exc).__name__}: {exc}")


async def _send(
    connections: Connections,
    node: Node,
    body: bytes,
    headers: Mapping[str, str],
    timeouts: Timeouts,
) -> Response:
    """POST the chat request to ``node``; returns once the response's head arrived."""
    return await connections.request(
        "POST",
        node.spec.url,
        CHAT_PATH,
        body=body,
        headers=headers,
        connect_timeout_s=timeouts.connect_s,
    )


async def post_chat(
    connections: Connections,
    node: Node,
    body: bytes,
    *,
    headers: Mapping[str, str],
    timeouts: Timeouts,
    loop: asyncio.AbstractEventLoop,
    deadline: float | None = None,
) -> tuple[int, bytes, Response]:
    """Non-streaming call: the whole answer within the total deadline.

    ``deadline`` (``loop``'s time) is the request's own end, when it comes sooner.
    """
    end = loop.time() + timeouts.total_s
    if deadline is not None:
        end = min(end, deadline)
    with translate_errors(node, "request"):
        async with LoopTimeout(loop, end):
            response = await _send(connections, node, body, headers, timeouts)
            payload = await response.read()  # gives the connection back, read whole or not
    raise_for_status(node, response.status, payload, response.headers)
    return response.status, payload, response


async def open_stream(
    connections: Connections,
    node: Node,
    body: bytes,
    *,
    headers: Mapping[str, str],
    timeouts: Timeouts,
    loop: asyncio.AbstractEventLoop,
    deadline: float | None = None,
) -> UpstreamStream:
    """Streaming call: returns once the first token arrived within the first-token deadline
    (and before ``deadline``, ``loop``'s time, when that comes sooner)."""
    first_token_at = loop.time() + timeouts.first_token_s
    if deadline is not None:
        first_token_at = min(first_token_at, deadline)
    response: Response | None = None
    head: list[Event] = []
    try:
        with translate_errors(node, "first token"):
            async with LoopTimeout(loop, first_token_at):
                response = await _send(connections, node, body, headers, timeouts)
                if response.status != 200:
                    payload = await response.read()
                    raise_for_status(node, response.status, payload, response.headers)
                if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
                    raise UpstreamProtocolError(
                        f"{node.tier} node {node.name}: expected an event stream, got "
                        f"{response.headers.get('Content-Type')!r}"
                    )
                events = SseReader(response.content, idle_s=timeouts.idle_s, loop=loop)
                while True:
                    data = await events.next()
                    if data is None or data == DONE:
                        raise UpstreamProtocolError(
                            f"{node.tier} node {node.name}: the stream ended before the first token"
                        )
                    event = parse_event(data)
                    if event is None:
                        raise UpstreamProtocolError(
                            f"{node.tier} node {node.name}: malformed event before the first token"
                        )
                    head.append(event)
                    if has_output(event.chunk):
                        break
        return UpstreamStream(node=node, head=tuple(head), events=events, response=response)
    except BaseException:
        if response is not None:
            response.close()
        raise


def raise_for_status(node: Node, status: int, payload: bytes, headers: Mapping[str, str]) -> None:
    """Map a non-2xx answer to the error that decides between retry, failover and give-up."""
    if 200 <= status < 300:
        return
    where = f"{node.tier} node {node.name}"
    body = _error_body(status, payload)
    message = body["error"]["message"]
    retry_after_s = parse_retry_after(headers.get("Retry-After"))
    if status == 429:
        raise UpstreamRateLimited(
            f"{where}: rate limited (429): {message}", retry_after_s=retry_after_s
        )
    if status == 503:
        raise UpstreamOverloaded(
            f"{where}: overloaded (503): {message}", retry_after_s=retry_after_s
        )
    if status >= 500 or status in (404, 408):
        # 404: the node does not serve the model the policy says it does (misconfiguration).
        raise UpstreamStatusError(f"{where}: status {status}: {message}", upstream_status=status)
    raise UpstreamClientError(status, body)


def _error_body(status: int, payload: bytes) -> ErrorBody:
    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        error = parsed["error"]
        return error_body(
            str(error.get("message") or f"upstream status {status}"),
            type=str(error.get("type") or "invalid_request_error"),
            code=None if error.get("code") is None else str(error.get("code")),
            param=None if error.get("param") is None else str(error.get("param")),
        )
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):  # vLLM's older shape
        return error_body(
            parsed["message"],
            type=str(parsed.get("type") or "invalid_request_error"),
            code=None if parsed.get("code") is None else str(parsed.get("code")),
        )
    text = payload[:500].decode("utf-8", "replace").strip() or f"upstream status {status}"
    return error_body(text, type="invalid_request_error", code=None)


__all__ = ["UpstreamError", "UpstreamStream", "open_stream", "post_chat", "raise_for_status"]
