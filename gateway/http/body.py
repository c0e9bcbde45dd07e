"""Reading a request body under a size limit, without buffering more than the limit."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.errors import BodyTooLarge, InvalidRequest, RequestTimeout


async def read_body(request: web.Request, *, max_body_bytes: int, timeout_s: float) -> bytes:
    """The raw body (decompressed per its ``Content-Encoding``), refusing more than
    ``max_body_bytes`` without reading it all, and a body that cannot be decoded (a
    ``Content-Encoding: gzip`` body that is not gzip, broken chunked framing) with a 400;
    a body not all there ``timeout_s`` after the headers is a 408 (RequestTimeout)."""
    length = request.content_length
    if length is not None and length > max_body_bytes:
        raise BodyTooLarge(f"Request body is {length} bytes; the limit is {max_body_bytes}.")
    content = request.content
    try:
        if content.is_eof():  # nearly every request: the whole body came with the headers
            body = content.read_nowait()
            if len(body) > max_body_bytes:
                raise BodyTooLarge(f"Request body exceeds the limit of {max_body_bytes} bytes.")
            return body
    except web.RequestPayloadError as exc:
        raise InvalidRequest(f"The request body could not be read: {exc}") from exc
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):  # a body sent at 1 byte/s holds no socket forever
            async for chunk in content.iter_chunked(65536):
                size += len(chunk)
                if size > max_body_bytes:
                    raise BodyTooLarge(f"Request body exceeds the limit of {max_body_bytes} bytes.")
                chunks.append(chunk)
    except web.RequestPayloadError as exc:
        raise InvalidRequest(f"The request body could not be read: {exc}") from exc
    except TimeoutError as exc:
        raise RequestTimeout(f"The request body did not arrive within {timeout_s:g} s.") from exc
    return b"".join(chunks)
