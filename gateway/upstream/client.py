"""Calls to one node, with every aiohttp and HTTP failure translated into gateway errors.

This module is the only place that catches aiohttp's exceptions.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import aiohttp

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
from gateway.protocol import ErrorBody, error_body
from gateway.routing.policy import Timeouts
from gateway.telemetry import NO_ATTEMPT, AttemptSpan
from gateway.upstream.chunks import has_output, parse_chunk
from gateway.upstream.pool import Node
from gateway.upstream.retry import parse_retry_after
from gateway.upstream.sse import DONE, iter_sse_data

CHAT_PATH = "/v1/chat/completions"


@dataclass(slots=True)
class UpstreamStream:
    """An open streaming response whose first token has already arrived.

    ``head`` holds the events up to and including the first one that carries output
    (a role-only opening chunk comes before it); ``rest`` yields the others.
    """

    head: tuple[bytes, ...]
    rest: AsyncIterator[bytes]
    response: aiohttp.ClientResponse
    attempt: AttemptSpan = NO_ATTEMPT
    """This attempt's span; whoever reads the stream records how it ended."""

    def close(self) -> None:
        self.response.close()
        self.attempt.end()  # a backstop: ending an ended span does nothing


@contextmanager
def translate_errors(node: Node, phase: str) -> Iterator[None]:
    """Turn transport failures of ``phase`` on ``node`` into :class:`UpstreamError`."""
    where = f"{node.tier} node {node.name} ({phase})"
    try:
        yield
    except TimeoutError as exc:
        raise UpstreamTimeout(f"{where}: timed out") from exc
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamConnectError(f"{where}: cannot connect: {exc.os_error}") from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise UpstreamConnectionReset(f"{where}: connection lost: {exc}") from exc
    except aiohttp.ClientPayloadError as exc:  # a chunked body cut off mid-way
        raise UpstreamConnectionReset(f"{where}: connection lost: {exc}") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamProtocolError(f"{where}: {type(exc).__name__}: {exc}") from exc


async def post_chat(
    session: aiohttp.ClientSession,
    node: Node,
    body: bytes,
    *,
    headers: Mapping[str, str],
    timeouts: Timeouts,
    deadline: float | None = None,
) -> tuple[int, bytes, aiohttp.ClientResponse]:
    """Non-streaming call: the whole answer within the total deadline.

    ``deadline`` (event-loop time) is the request's own end, when it comes sooner.
    """
    total_s = timeouts.total_s
    if deadline is not None:
        total_s = min(total_s, max(0.0, deadline - asyncio.get_running_loop().time()))
    timeout = aiohttp.ClientTimeout(
        total=total_s, sock_connect=timeouts.connect_s, connect=timeouts.connect_s
    )
    with translate_errors(node, "request"):
        async with session.post(
            node.spec.url + CHAT_PATH, data=body, headers=headers, timeout=timeout
        ) as response:
            payload = await response.read()
    raise_for_status(node, response.status, payload, response.headers)
    return response.status, payload, response


async def open_stream(
    session: aiohttp.ClientSession,
    node: Node,
    body: bytes,
    *,
    headers: Mapping[str, str],
    timeouts: Timeouts,
    deadline: float | None = None,
) -> UpstreamStream:
    """Streaming call: returns once the first token arrived within the first-token deadline
    (and before ``deadline``, event-loop time, when that comes sooner)."""
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=timeouts.connect_s, connect=timeouts.connect_s
    )
    first_token_at = asyncio.get_running_loop().time() + timeouts.first_token_s
    if deadline is not None:
        first_token_at = min(first_token_at, deadline)
    response: aiohttp.ClientResponse | None = None
    head: list[bytes] = []
    try:
        with translate_errors(node, "first token"):
            async with asyncio.timeout_at(first_token_at):
                response = await session.post(
                    node.spec.url + CHAT_PATH, data=body, headers=headers, timeout=timeout
                )
                if response.status != 200:
                    payload = await response.read()
                    raise_for_status(node, response.status, payload, response.headers)
                if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
                    raise UpstreamProtocolError(
                        f"{node.tier} node {node.name}: expected an event stream, got "
                        f"{response.headers.get('Content-Type')!r}"
                    )
                events = iter_sse_data(response.content, idle_s=timeouts.idle_s)
                while True:
                    event = await anext(events, None)
                    if event is None or event == DONE:
                        raise UpstreamProtocolError(
                            f"{node.tier} node {node.name}: the stream ended before the first token"
                        )
                    chunk = parse_chunk(event)
                    if chunk is None:
                        raise UpstreamProtocolError(
                            f"{node.tier} node {node.name}: malformed event before the first token"
                        )
                    head.append(event)
                    if has_output(chunk):
                        break
        return UpstreamStream(head=tuple(head), rest=_guarded(node, events), response=response)
    except BaseException:
        if response is not None:
            response.close()
        raise


async def _guarded(node: Node, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    while True:
        with translate_errors(node, "stream"):
            event = await anext(events, None)
        if event is None:
            return
        yield event


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
