"""The instant scripted upstream of ``bench/overhead.py``, and its OTLP sink.

A real aiohttp server on loopback that answers every chat request at once: a stream is 20
content chunks (one write each, as a node sends one event per token), the finish chunk,
the usage chunk and ``[DONE]``; a non-stream request gets the same answer as one JSON body
with usage. It echoes the requested model, as a node does. ``/health`` answers 200;
``/metrics`` is 404 (not a vLLM node, so the gateway balances by its own counts).

    python bench/_overhead_upstream.py --port 9001
    python bench/_overhead_upstream.py --port 4318 --otlp-sink
"""

from __future__ import annotations

import argparse
import json

from aiohttp import web

MODEL = "bench-model"
WORDS = [f" word{i}" for i in range(20)]
ANSWER = "".join(WORDS)
USAGE = {"prompt_tokens": 12, "completion_tokens": len(WORDS), "total_tokens": 12 + len(WORDS)}


def _chunk(model: str, delta: dict[str, str], finish: str | None) -> dict[str, object]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [choice],
    }


def stream_events(model: str) -> list[bytes]:
    """The SSE events of one streamed answer, each to be written on its own."""
    events: list[dict[str, object]] = [
        _chunk(model, {"role": "assistant", "content": word} if i == 0 else {"content": word}, None)
        for i, word in enumerate(WORDS)
    ]
    events.append(_chunk(model, {}, "stop"))
    usage = _chunk(model, {}, None)
    usage["choices"], usage["usage"] = [], USAGE
    events.append(usage)
    return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


def completion(model: str) -> bytes:
    message = {"role": "assistant", "content": ANSWER, "refusal": None}
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
            ],
            "usage": USAGE,
        }
    ).encode()


def serve_upstream(port: int) -> None:
    cache: dict[str, tuple[list[bytes], bytes]] = {}  # by model: the answer costs no CPU here

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = str(body.get("model") or MODEL)
        if model not in cache:
            cache[model] = (stream_events(model), completion(model))
        events, whole = cache[model]
        if not body.get("stream"):
            return web.Response(body=whole, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(event)
        await response.write_eof()
        return response

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_otlp_sink(port: int) -> None:
    """Accepts OTLP/HTTP trace exports and discards them (an empty ExportTraceServiceResponse
    is zero bytes of protobuf)."""

    async def traces(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--otlp-sink", action="store_true")
    args = parser.parse_args()
    (serve_otlp_sink if args.otlp_sink else serve_upstream)(args.port)


if __name__ == "__main__":
    main()
