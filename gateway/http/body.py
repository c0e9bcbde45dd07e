"""Reading a request body under a size limit, without buffering more than the limit."""

from __future__ import annotations

from aiohttp import web

from gateway.errors import BodyTooLarge


async def read_body(request: web.Request, *, max_body_bytes: int) -> bytes:
    """The raw body, refusing more than ``max_body_bytes`` without reading it all."""
    length = request.content_length
    if length is not None and length > max_body_bytes:
        raise BodyTooLarge(f"Request body is {length} bytes; the limit is {max_body_bytes}.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > max_body_bytes:
            raise BodyTooLarge(f"Request body exceeds the limit of {max_body_bytes} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)
