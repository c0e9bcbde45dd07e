"""Session store cost: what history load + append add to a request, and replay speed.

    .venv/bin/python bench/sessions.py [--requests 1000] [--history-turns 20]
                                       [--spool-turns 10000] [--deadline-s 240]

Starts a real ``redis-server`` on loopback (no persistence), a fast upstream (canned
answer, its own process) and the real gateway (``python -m gateway serve`` with
``REDIS_URL``, its own process), then measures from this process, in one run:

1. the raw store calls (``SessionStore.load`` of a ``--history-turns`` history, and the
   Lua ``append`` of one user + assistant pair), p50/p99;
2. the same gateway, same upstream, requests alternating between no session header and
   an ``x-session-id`` whose history grows to ``--history-turns`` (then a new session
   starts), p50/p99 of each and the difference: load + merge + fitting + append, plus
   routing and forwarding the longer conversation;
3. the spool's replay rate: ``--spool-turns`` turns (user + assistant pairs) queued as if
   Redis had been down, written out by ``SessionService.drain`` (turns/s).

Every arm crosses the same process boundaries (client, gateway, upstream, Redis are four
processes), so the difference is what sessions cost, scheduling included.
Bounded: every phase stops at ``--deadline-s``; the three servers are stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import wait_ready  # bench/ is the script directory

from gateway.metrics import GatewayMetrics
from gateway.policy.model import SessionsSpec
from gateway.sessions.keys import SessionRef
from gateway.sessions.service import SessionService
from gateway.sessions.spool import PendingAppend
from gateway.sessions.store import SessionStore
from scripts.stack.processes import die_with_parent
from tests.fixtures.redis import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench-model"
ANSWER = "A short canned answer of about a dozen tokens, for the benchmark."
COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17},
    }
).encode()
_CHUNK = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": MODEL}
STREAM = (
    b"".join(
        b"data: " + json.dumps(event).encode() + b"\n\n"
        for event in (
            {
                **_CHUNK,
                "choices": [{"index": 0, "delta": {"content": ANSWER}, "finish_reason": None}],
            },
            {**_CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {
                **_CHUNK,
                "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17},
            },
        )
    )
    + b"data: [DONE]\n\n"
)
QUESTION = "What is the capital of France, and why is it the capital?"


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def passed(self) -> bool:
        return time.monotonic() >= self.end


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(values: list[float]) -> str:
    p50, p99 = pct(values, 0.5) * 1e3, pct(values, 0.99) * 1e3
    return f"p50 {p50:7.3f} ms  p99 {p99:7.3f} ms  (n={len(values)})"


def turn(role: str, content: str, request_id: str) -> dict[str, object]:
    return {"role": role, "content": content, "request_id": request_id, "at": time.time()}


def serve_upstream(port: int) -> None:
    """The fast upstream: a canned answer (JSON or SSE, as asked), no model."""

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("stream"):  # the gateway may fetch even plain requests as streams
            return web.Response(body=STREAM, content_type="text/event-stream")
        return web.Response(body=COMPLETION, content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


async def raw_store(url: str, requests: int, history_turns: int, deadline: Deadline) -> None:
    store = SessionStore.from_url(url)
    try:
        loads: list[float] = []
        appends: list[float] = []
        session = SessionRef(f"raw-{uuid.uuid4().hex[:8]}")
        for i in range(history_turns // 2):
            pair = (turn("user", QUESTION, f"h{i}"), turn("assistant", ANSWER, f"h{i}"))
            await store.append(
                session, f"h{i}", pair, replace=False, ttl_s=600, max_turns=history_turns,
                timeout_s=1.0,
            )  # fmt: skip
        for i in range(requests):
            if deadline.passed():
                break
            started = time.perf_counter()
            await store.load(session, timeout_s=1.0)
            loads.append(time.perf_counter() - started)
            pair = (turn("user", QUESTION, f"r{i}"), turn("assistant", ANSWER, f"r{i}"))
            started = time.perf_counter()
            await store.append(
                session, f"r{i}", pair, replace=False, ttl_s=600, max_turns=history_turns,
                timeout_s=1.0,
            )  # fmt: skip
            appends.append(time.perf_counter() - started)
        print(f"raw store load ({history_turns} turns)  {ms(loads)}")
        print(f"raw store append (2 turns, Lua)  {ms(appends)}")
    finally:
        await store.aclose()


async def through_gateway(
    redis_url: str, requests: int, history_turns: int, deadline: Deadline
) -> None:
    upstream_port, gateway_port = free_port(), free_port()
    policy = textwrap.dedent(
        f"""\
        version: 1
        tiers:
          edge:
            context_window: 8192
            nodes: [{{url: "http://127.0.0.1:{upstream_port}", model: {MODEL}, name: edge-1}}]
          cloud:
            nodes: []
        routing:
          classifier: {{kind: heuristic}}
          cloud_above: 1.0
        sessions:
          ttl_s: 600
          max_turns: {history_turns + 2}
        """
    )
    plain: list[float] = []
    with_session: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_text(policy)
        env = {
            **os.environ,
            "GATEWAY_POLICY": str(path),
            "GATEWAY_PORT": str(gateway_port),
            "GATEWAY_LOG_LEVEL": "WARNING",
            "REDIS_URL": redis_url,
        }
        # Both start in the background while this process waits for them to answer.
        upstream = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, __file__, "--serve-upstream", str(upstream_port)],
            preexec_fn=die_with_parent(),  # no server outlives a killed benchmark
        )
        gateway = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "gateway", "serve"],
            cwd=ROOT,
            env=env,
            preexec_fn=die_with_parent(),
        )
        try:
            await wait_ready(f"http://127.0.0.1:{upstream_port}/health")
            await wait_ready(f"http://127.0.0.1:{gateway_port}/readyz")
            url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
            body = {"model": "auto", "messages": [{"role": "user", "content": QUESTION}]}
            session = uuid.uuid4().hex
            turns_in_session = 0
            async with aiohttp.ClientSession() as http:

                async def one(headers: dict[str, str]) -> float:
                    started = time.perf_counter()
                    async with http.post(url, json=body, headers=headers) as response:
                        await response.read()
                        if response.status != 200:
                            raise RuntimeError(f"status {response.status} from the gateway")
                    return time.perf_counter() - started

                for _ in range(50):  # warm-up: connections, tokenizer, Lua script cache
                    await one({})
                    await one({"x-session-id": "warm-up"})
                for i in range(requests):
                    if deadline.passed():
                        break
                    if turns_in_session >= history_turns:
                        session, turns_in_session = uuid.uuid4().hex, 0
                    headers = {"x-session-id": session}
                    # Alternate which goes first, so drift hits both arms alike.
                    if i % 2:
                        plain.append(await one({}))
                        with_session.append(await one(headers))
                    else:
                        with_session.append(await one(headers))
                        plain.append(await one({}))
                    turns_in_session += 2
        finally:
            stop(gateway)
            stop(upstream)
    print(f"gateway, no session            {ms(plain)}")
    print(f"gateway, session (<= {history_turns} turns)  {ms(with_session)}")
    print(
        "added by sessions: "
        f"p50 {(pct(with_session, 0.5) - pct(plain, 0.5)) * 1e3:+.3f} ms, "
        f"p99 {(pct(with_session, 0.99) - pct(plain, 0.99)) * 1e3:+.3f} ms, "
        f"mean {(statistics.fmean(with_session) - statistics.fmean(plain)) * 1e3:+.3f} ms"
    )


async def replay_rate(url: str, spool_turns: int, deadline: Deadline) -> None:
    spec = SessionsSpec(spool_max_turns=spool_turns, redis_timeout_s=1.0)
    service = SessionService(
        store=SessionStore.from_url(url), spec=lambda: spec, metrics=GatewayMetrics()
    )
    try:
        sessions = [f"spool-{i}" for i in range(50)]
        for i in range(spool_turns // 2):
            rid = f"s{i}"
            service.spool.push(
                PendingAppend(
                    session=SessionRef(sessions[i % len(sessions)]),
                    request_id=rid,
                    turns=(turn("user", QUESTION, rid), turn("assistant", ANSWER, rid)),
                )
            )
        queued = service.spool.turns
        started = time.perf_counter()
        await service.drain()
        elapsed = time.perf_counter() - started
        written = queued - service.spool.turns
        print(
            f"spool replay: {written} turns ({written // 2} appends over {len(sessions)} "
            f"sessions) in {elapsed:.2f} s = {written / elapsed:,.0f} turns/s"
        )
    finally:
        await service.aclose()


async def main(args: argparse.Namespace) -> None:
    deadline = Deadline(args.deadline_s)
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(binary="redis-server", port=free_port(), workdir=Path(tmp))
        redis.start()
        try:
            print(f"redis-server on 127.0.0.1:{redis.port}; {args.requests} requests per arm")
            await raw_store(redis.url, args.requests, args.history_turns, deadline)
            await through_gateway(redis.url, args.requests, args.history_turns, deadline)
            await replay_rate(redis.url, args.spool_turns, deadline)
        finally:
            redis.stop()
    if deadline.passed():
        print(f"(stopped early at the {args.deadline_s:g} s deadline)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-upstream":
        serve_upstream(int(sys.argv[2]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--history-turns", type=int, default=20)
    parser.add_argument("--spool-turns", type=int, default=10_000)
    parser.add_argument("--deadline-s", type=float, default=240.0)
    asyncio.run(main(parser.parse_args()))
