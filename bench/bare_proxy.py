"""The floor of one Python aiohttp hop: a pass-through proxy with no features at all.

``bench/overhead.py`` runs it beside the gateway, on the same core and against the same
upstream, so that the gateway's CPU per request can be read as a multiple of what any
aiohttp proxy spends. It forwards ``POST /v1/chat/completions`` to one upstream and relays
the answer: a JSON body whole, an event stream piece by piece as it arrives (nothing
parsed, nothing buffered). No routing, validation, sessions, metrics or logs.

    python bench/bare_proxy.py --port 9000 --upstream http://127.0.0.1:9001
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

UPSTREAM = web.AppKey("upstream", str)
CLIENT = web.AppKey("client", aiohttp.ClientSession)
# Headers that describe one hop's framing, not the answer: aiohttp sets its own.
HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


async def chat(request: web.Request) -> web.StreamResponse:
    """Forward the body unchanged; relay status, content type and body or stream."""
    body = await request.read()
    client = request.app[CLIENT]
    url = request.app[UPSTREAM] + "/v1/chat/completions"
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    async with client.post(url, data=body, headers=headers) as upstream:
        relayed = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
        if upstream.content_type != "text/event-stream":
            return web.Response(status=upstream.status, body=await upstream.read(), headers=relayed)
        response = web.StreamResponse(status=upstream.status, headers=relayed)
        await response.prepare(request)
        async for piece in upstream.content.iter_any():
            await response.write(piece)
        await response.write_eof()
        return response


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def client_ctx(app: web.Application) -> AsyncIterator[None]:
    # One pooled session for the process, sized like the gateway's per-node limit.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as client:
        app[CLIENT] = client
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9001")
    args = parser.parse_args()
    app = web.Application()
    app[UPSTREAM] = args.upstream.rstrip("/")
    app.cleanup_ctx.append(client_ctx)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
