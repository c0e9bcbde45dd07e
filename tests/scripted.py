"""Scripted upstreams: real aiohttp servers on loopback that behave as a test says.

Each one speaks the OpenAI chat-completions format and records every request it saw
(body, time), so tests can assert both what the client got and what each upstream saw.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from aiohttp.test_utils import TestServer

Behaviour = Literal[
    "ok",
    "status",
    "hang",
    "reset",
    "cut",
    "no_done",
    "malformed",
    "echo",
    "stall",
    "silent_stream",
    "no_done_hold",
    "error_event",
]
"""``echo`` answers ``[<number of messages received>] <text of the last message>``.

Faults during a stream: ``cut`` drops the connection after ``cut_after`` chunks;
``stall`` stops sending after ``cut_after`` chunks and keeps the connection open;
``silent_stream`` sends the headers and an opening role chunk, then nothing;
``no_done_hold`` sends the finish reason and usage but neither ``[DONE]`` nor the end of
the body; ``error_event`` sends an in-stream error event after ``cut_after`` chunks and
ends without ``[DONE]`` (as the edge node does when generation fails)."""


@dataclass(slots=True, kw_only=True)
class Script:
    """What the upstream does with each chat request (the next one in ``queue`` first)."""

    behaviour: Behaviour = "ok"
    status: int = 200
    error_code: str | None = None
    error_message: str = "scripted failure"
    retry_after: str | None = None
    first_token_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    chunks: tuple[str, ...] = ("Hello", " from", " the", " upstream", ".")
    cut_after: int = 2
    """For ``cut``, ``stall`` and ``error_event``: chunks sent before the fault."""
    role_chunk: bool = False
    """Open the stream with a role-only chunk first, as vLLM and llama.cpp do."""
    reject_prefill: bool = False
    """Answer 400 to a request with ``continue_final_message`` (a server without prefill)."""
    usage_on_finish: bool = False
    """Send the usage on the finish-reason chunk rather than in a chunk of its own."""
    null_usage: bool = False
    """With usage asked for, send ``"usage": null`` on every other chunk, as vLLM does."""
    compact_json: bool = False
    """Encode events compactly (``{"a":1}``), as vLLM and the edge node do."""
    utf8_json: bool = False
    """Write text outside ASCII as UTF-8, not as ``\\u`` escapes (as vLLM does)."""
    done_delay_s: float = 0.0
    """Wait this long after the usage before ``[DONE]`` and the end of the body."""
    set_cookie: str | None = None
    """A ``Set-Cookie`` header on the answer (as a load balancer's affinity cookie would be)."""
    compress: Literal["no", "if_accepted", "always"] = "no"
    """Compress the answer: as the request's ``Accept-Encoding`` allows (a server or a proxy
    in front of one with compression on), or with gzip whatever the request said."""


@dataclass(slots=True)
class Seen:
    body: dict[str, object]
    at: float
    headers: dict[str, str]
    disconnected_at: float | None = None
    """When the gateway closed the connection while this request was still being served."""
    peer: object = None
    """The gateway's end of the connection (host, port): the same for a reused connection."""


SEEN: web.RequestKey[Seen] = web.RequestKey("scripted_seen", Seen)


@dataclass(slots=True)
class ScriptedUpstream:
    model: str
    script: Script = field(default_factory=Script)
    queue: list[Script] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    health_status: int = 200
    metrics_text: str | None = None
    """Served at /metrics when set (e.g. a vLLM page, for load-aware balancing)."""
    server: TestServer | None = None
    in_flight: int = 0
    """Chat requests being served right now."""
    peak_in_flight: int = 0
    """The most chat requests it served at once."""

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def start(self, port: int | None = None) -> ScriptedUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_watched)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        # TestServer cancels a handler whose client went away: that is how a disconnect
        # shows up below, as the CancelledError or ConnectionResetError of the handler.
        self.server = TestServer(app, host="127.0.0.1", **({"port": port} if port else {}))
        await self.server.start_server()
        return self

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    @property
    def calls(self) -> int:
        return len(self.seen)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, status=self.health_status)

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics_text is None:
            raise web.HTTPNotFound()
        return web.Response(text=self.metrics_text, content_type="text/plain")

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model"}]}
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen = Seen(body=body, at=time.monotonic(), headers=dict(request.headers), peer=peer)
        self.seen.append(seen)
        request[SEEN] = seen
        script = self.queue.pop(0) if self.queue else self.script
        if script.reject_prefill and body.get("continue_final_message"):
            return web.json_response(
                {
                    "error": {
                        "message": "continue_final_message is not supported",
                        "type": "invalid_request_error",
                        "param": "continue_final_message",
                        "code": None,
                    }
                },
                status=400,
            )
        if script.behaviour == "hang":
            await asyncio.sleep(3600)
        if script.behaviour == "reset":
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(0.01)
            raise web.HTTPInternalServerError()  # never reaches the client: the socket is gone
        if script.behaviour == "status":
            headers = {"Retry-After": script.retry_after} if script.retry_after else {}
            return web.json_response(
                {
                    "error": {
                        "message": script.error_message,
                        "type": "invalid_request_error",
                        "param": None,
                        "code": script.error_code,
                    }
                },
                status=script.status,
                headers=headers,
            )
        await asyncio.sleep(script.first_token_delay_s)
        if script.behaviour == "echo":
            script = dataclasses.replace(script, chunks=_echo(body))
        if body.get("stream"):
            return await self._stream(request, body, script)
        text = "".join(script.chunks)
        answer = web.json_response(_completion(self.model, text, body), headers=_headers(script))
        _compress(answer, script)
        return answer

    async def _stream(
        self, request: web.Request, body: dict[str, object], script: Script
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", **_headers(script)}
        )
        _compress(response, script)
        await response.prepare(request)
        created = int(time.time())
        options = body.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage")
        if script.role_chunk or script.behaviour == "silent_stream":
            role = _chunk(self.model, created, {"role": "assistant", "content": ""}, None)
            await response.write(_event(role, script))
        if script.behaviour == "silent_stream":
            await asyncio.sleep(3600)
        for index, piece in enumerate(script.chunks):
            if script.behaviour == "cut" and index == script.cut_after:
                assert request.transport is not None
                request.transport.abort()
                return response
            if script.behaviour == "stall" and index == script.cut_after:
                await asyncio.sleep(3600)
            if script.behaviour == "error_event" and index == script.cut_after:
                error = {"error": {"message": "generation failed", "type": "server_error"}}
                await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
                await response.write_eof()
                return response
            if script.behaviour == "malformed" and index == 1:
                await response.write(b"data: {not json\n\n")
            chunk = _chunk(self.model, created, {"content": piece}, None)
            if wants_usage and script.null_usage:
                chunk["usage"] = None
            await response.write(_event(chunk, script))
            await asyncio.sleep(script.chunk_delay_s)
        finish = _chunk(self.model, created, {}, "stop")
        if wants_usage and script.usage_on_finish:
            finish["usage"] = _usage(body, script.chunks)
        await response.write(_event(finish, script))
        if wants_usage and not script.usage_on_finish:
            usage_chunk = {
                **_chunk(self.model, created, {}, None),
                "choices": [],
                "usage": _usage(body, script.chunks),
            }
            await response.write(_event(usage_chunk, script))
        if script.behaviour == "no_done_hold":
            await asyncio.sleep(3600)
        await asyncio.sleep(script.done_delay_s)
        if script.behaviour != "no_done":
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _chat_watched(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._chat(request)
        except (asyncio.CancelledError, ConnectionResetError):
            seen = request.get(SEEN)
            if seen is not None:
                seen.disconnected_at = time.monotonic()
            raise
        finally:
            self.in_flight -= 1


def _headers(script: Script) -> dict[str, str]:
    return {"Set-Cookie": script.set_cookie} if script.set_cookie is not None else {}


def _compress(response: web.StreamResponse, script: Script) -> None:
    if script.compress == "if_accepted":
        response.enable_compression()
    elif script.compress == "always":
        response.enable_compression(force=web.ContentCoding.gzip)


def _event(chunk: dict[str, object], script: Script) -> bytes:
    separators = (",", ":") if script.compact_json else (", ", ": ")
    encoded = json.dumps(chunk, separators=separators, ensure_ascii=not script.utf8_json)
    return b"data: " + encoded.encode() + b"\n\n"


def _echo(body: dict[str, object]) -> tuple[str, ...]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return ("[0]",)
    last = messages[-1]
    content = last.get("content") if isinstance(last, dict) else None
    return (f"[{len(messages)}] ", content if isinstance(content, str) else "")


def _usage(body: dict[str, object], chunks: tuple[str, ...]) -> dict[str, int]:
    messages = body.get("messages")
    prompt = 5 * len(messages) if isinstance(messages, list) else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": len(chunks),
        "total_tokens": prompt + len(chunks),
    }


def _completion(model: str, text: str, body: dict[str, object]) -> dict[str, object]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": _usage(body, (text,)),
    }


def _chunk(
    model: str, created: int, delta: dict[str, str], finish: str | None
) -> dict[str, object]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def unused_port() -> int:
    """A loopback port with nothing listening (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
