"""Chaos benchmark: steady load through the gateway while nodes are killed and restarted.

    python bench/chaos.py [--duration-s 80] [--concurrency 4] [--max-tokens 16]
                          [--stream-share 0.7] [--seed 1] [--json FILE]

What runs, all on 127.0.0.1, every process started here and stopped here by its PID:

- two real edge nodes (``python -m edge_node``, SmolLM2-135M on llama.cpp, one thread
  each) and two scripted cloud nodes (an OpenAI-compatible fake in a subprocess of this
  script that streams a fixed answer and honours vLLM's ``continue_final_message``, so
  a continued answer can be checked word for word);
- the gateway (``python -m gateway serve``) with a policy of short deadlines;
- ``--concurrency`` clients in a closed loop (bounded load), pinning the edge or the
  cloud tier by turns (``model: edge|cloud``), streaming or not.

Timeline (fractions of ``--duration-s``): edge-1 is SIGKILLed at 15 % and restarted at
35 %; cloud-1 is SIGKILLed at 50 % and restarted at 65 %; load stops at 90 %.

Every answer is checked: a streamed answer must end with a finish reason and
``[DONE]`` or with an in-stream error event; a non-streamed one must be a 200 with a
finish reason or an error status. Anything else is a *truncated success* (the goal is
none). Answers written only by the scripted cloud must equal its fixed text exactly.
The report gives client-visible errors per phase (before the response started vs
in-stream), p50/p99 latency per phase, the gateway's continuation and fallback counters,
and how long after a restarted node was healthy the gateway sent it traffic again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from _common import free_port  # bench/ is the script directory
from aiohttp import web

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parents[1]
sys.path.insert(0, str(REPO))

from scripts.stack.processes import die_with_parent  # noqa: E402

EDGE_MODEL = "smollm2-135m-instruct"
CLOUD_MODEL = "cloud-fake"
CLOUD_TEXT = (
    "The lighthouse keeper climbed the stairs at dusk, lit the lamp, and watched the "
    "ships find their way home through the storm."
)
CLOUD_CHUNK_DELAY_S = 0.03
QUESTIONS = (
    "Name three colours of the sea.",
    "Say hello to a sailor.",
    "What does a lighthouse do?",
    "Give one tip for a stormy night.",
)


# -- the scripted cloud node (runs as ``python bench/chaos.py cloud --port N``) ------------


def _cloud_words() -> list[str]:
    words = CLOUD_TEXT.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


async def _cloud_chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    pieces = _cloud_words()
    messages = body.get("messages") or []
    if body.get("continue_final_message") and messages:
        # Like vLLM: go on from the final assistant message (here: skip what it already says).
        partial = str(messages[-1].get("content") or "")
        if CLOUD_TEXT.startswith(partial):
            rest, emitted = [], ""
            for piece in pieces:
                if len(emitted) >= len(partial):
                    rest.append(piece)
                elif len(emitted) + len(piece) > len(partial):
                    rest.append(piece[len(partial) - len(emitted) :])
                emitted += piece
            pieces = [p for p in rest if p] or [""]
    created = int(time.time())
    base = {"id": f"chatcmpl-{os.getpid()}-{random.getrandbits(32):x}", "created": created}
    base |= {"object": "chat.completion.chunk", "model": CLOUD_MODEL}
    usage = {"prompt_tokens": 10 * len(messages), "completion_tokens": len(pieces)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    if not body.get("stream"):
        text = "".join(pieces)
        return web.json_response(
            {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)

    async def send(delta: dict[str, str], finish: str | None = None) -> None:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

    await send({"role": "assistant", "content": ""})
    for piece in pieces:
        await asyncio.sleep(CLOUD_CHUNK_DELAY_S)
        await send({"content": piece})
    await send({}, "stop")
    options = body.get("stream_options") or {}
    if options.get("include_usage"):
        chunk = {**base, "choices": [], "usage": usage}
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _serve_cloud(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _cloud_chat)
    app.router.add_get("/health", lambda _: web.json_response({"status": "ok"}))  # type: ignore[arg-type,return-value]
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()  # until killed


# -- processes ----------------------------------------------------------------------------


@dataclass(slots=True)
class Proc:
    name: str
    argv: list[str]
    url: str
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ),
                preexec_fn=die_with_parent(),  # no server outlives a killed benchmark
            )

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown (no graceful end of open streams)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


async def wait_healthy(session: aiohttp.ClientSession, url: str, timeout_s: float) -> float:
    """Wait for ``url`` (its /health) to answer 200; returns the monotonic time it did."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                if r.status == 200:
                    return time.monotonic()
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not healthy after {timeout_s:.0f} s")


def policy_text(edges: list[Proc], clouds: list[Proc]) -> str:
    def nodes(procs: list[Proc], model: str) -> str:
        return "".join(
            f'\n      - {{url: "{p.url}", model: "{model}", name: {p.name}}}' for p in procs
        )

    return f"""\
version: 1
tiers:
  edge:
    context_window: 2048
    max_concurrency_per_node: 4
    nodes:{nodes(edges, EDGE_MODEL)}
  cloud:
    context_window: 2048
    max_concurrency_per_node: 16
    nodes:{nodes(clouds, CLOUD_MODEL)}
routing:
  classifier: {{kind: heuristic}}
  allow_pinning: true
fallback:
  max_attempts: 4
  timeouts_s: {{connect: 1, first_token: 8, idle: 3, total: 40}}
health:
  interval_s: 0.5
  timeout_s: 1
  failure_threshold: 2
  open_s: 1
"""


# -- load -------------------------------------------------------------------------------


@dataclass(slots=True)
class Result:
    started: float
    seconds: float
    tier: str
    stream: bool
    outcome: str
    """ok | error_before_start | error_in_stream | truncated_success | text_mismatch"""
    node: str = ""
    headers_at: float | None = None
    """When the response headers (and so the answering node) arrived."""
    detail: str = ""


@dataclass(slots=True)
class Load:
    url: str
    max_tokens: int
    stream_share: float
    rng: random.Random
    results: list[Result] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    streaming_on: dict[str, int] = field(default_factory=dict)
    """Streams whose headers came from each node and that are still being read."""

    async def until_streaming_on(self, node: str, timeout_s: float) -> bool:
        """Wait until a stream from ``node`` is in progress, so that a kill cuts one."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.streaming_on.get(node, 0) > 0:
                return True
            await asyncio.sleep(0.01)
        return False

    async def worker(self, session: aiohttp.ClientSession, index: int) -> None:
        turn = index
        while not self.stop.is_set():
            turn += 1
            tier = "edge" if turn % 2 == 0 else "cloud"
            stream = self.rng.random() < self.stream_share
            await self.one(session, tier, stream)

    async def one(self, session: aiohttp.ClientSession, tier: str, stream: bool) -> None:
        body: dict[str, object] = {
            "model": tier,
            "messages": [{"role": "user", "content": self.rng.choice(QUESTIONS)}],
            "max_tokens": self.max_tokens,
            "stream": stream,
            "temperature": 0,
        }
        started = time.monotonic()
        result = Result(started=started, seconds=0.0, tier=tier, stream=stream, outcome="ok")
        try:
            async with session.post(self.url + "/v1/chat/completions", json=body) as r:
                result.node = r.headers.get("x-gateway-node", "")
                result.headers_at = time.monotonic()
                if r.status != 200:
                    result.outcome, result.detail = "error_before_start", f"{r.status}"
                    await r.read()
                elif stream:
                    self.streaming_on[result.node] = self.streaming_on.get(result.node, 0) + 1
                    try:
                        await self._check_stream(r, result)
                    finally:
                        self.streaming_on[result.node] -= 1
                else:
                    self._check_completion(await r.json(), result)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The connection broke without an error event: the client can't tell a cut
            # answer from a whole one unless it checks the end markers, which it does.
            result.outcome, result.detail = "truncated_success", f"transport: {exc!r}"
        result.seconds = time.monotonic() - started
        self.results.append(result)

    async def _check_stream(self, r: aiohttp.ClientResponse, result: Result) -> None:
        finish, done, error, models, text = None, False, None, set(), []
        async for raw in r.content:
            line = raw.rstrip(b"\r\n")
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                error = chunk["error"]
                continue
            models.add(chunk.get("model"))
            for choice in chunk.get("choices") or []:
                text.append(choice.get("delta", {}).get("content") or "")
                finish = choice.get("finish_reason") or finish
        if error is not None:
            result.outcome = "error_in_stream"
            result.detail = str(error.get("code"))
            if done or finish:
                result.outcome = "truncated_success"  # an error must not look complete
        elif not (done and finish):
            result.outcome, result.detail = "truncated_success", f"done={done} finish={finish}"
        elif models == {CLOUD_MODEL} and "".join(text) != CLOUD_TEXT:
            result.outcome, result.detail = "text_mismatch", "".join(text)[:200]

    def _check_completion(self, body: dict[str, object], result: Result) -> None:
        choices = body.get("choices") or []
        choice = choices[0] if isinstance(choices, list) and choices else {}
        if not isinstance(choice, dict) or not choice.get("finish_reason"):
            result.outcome, result.detail = "truncated_success", "no finish_reason"
            return
        text = (choice.get("message") or {}).get("content")
        only_cloud = body.get("model") == CLOUD_MODEL and result.node.startswith("cloud")
        if only_cloud and text != CLOUD_TEXT:
            result.outcome, result.detail = "text_mismatch", str(text)[:200]


# -- the run ----------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


async def gateway_counters(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(url + "/metrics") as r:
        text = await r.text()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("gateway_continuations_total", "gateway_fallbacks_total"):
                key = s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
                totals[key] = s.value
    return totals


async def run(args: argparse.Namespace) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    py = sys.executable
    edges = [
        Proc(
            name=f"edge-{i}",
            argv=[
                py,
                "-m",
                "edge_node",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--served-model-name",
                EDGE_MODEL,
                "--n-ctx",
                "2048",
                "--n-threads",
                "1",
            ],
            url=f"http://127.0.0.1:{port}",
            log=workdir / f"edge-{i}.log",
        )
        for i, port in ((1, free_port()), (2, free_port()))
    ]
    clouds = [
        Proc(
            name=f"cloud-{i}",
            argv=[py, str(SCRIPT), "cloud", "--port", str(port)],
            url=f"http://127.0.0.1:{port}",
            log=workdir / f"cloud-{i}.log",
        )
        for i, port in ((1, free_port()), (2, free_port()))
    ]
    gw_port = free_port()
    policy = workdir / "policy.yaml"
    policy.write_text(policy_text(edges, clouds))
    gateway = Proc(
        name="gateway",
        argv=[py, "-m", "gateway", "serve", "--port", str(gw_port), "--policy", str(policy)],
        url=f"http://127.0.0.1:{gw_port}",
        log=workdir / "gateway.log",
    )
    procs = [*edges, *clouds, gateway]
    events: list[tuple[float, str]] = []
    try:
        for proc in procs:
            proc.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            for proc in [*edges, *clouds]:
                await wait_healthy(session, proc.url + "/health", 120)
            await wait_healthy(session, gateway.url + "/readyz", 30)
            load = Load(
                url=gateway.url,
                max_tokens=args.max_tokens,
                stream_share=args.stream_share,
                rng=random.Random(args.seed),
            )
            t0 = time.monotonic()
            workers = [
                asyncio.create_task(load.worker(session, i)) for i in range(args.concurrency)
            ]

            async def at(fraction: float) -> None:
                await asyncio.sleep(max(0.0, t0 + fraction * args.duration_s - time.monotonic()))

            def mark(what: str) -> float:
                now = time.monotonic()
                events.append((now - t0, what))
                print(f"[{now - t0:6.1f} s] {what}", flush=True)
                return now

            recovery: dict[str, float] = {}
            outages: dict[str, tuple[float, float]] = {}
            for victim, down_at, up_at in ((edges[0], 0.15, 0.35), (clouds[0], 0.50, 0.65)):
                await at(down_at)
                # Kill it mid-answer: the interesting case for the clients.
                mid_stream = await load.until_streaming_on(victim.name, 5.0)
                killed = mark(f"SIGKILL {victim.name} ({'mid-stream' if mid_stream else 'idle'})")
                victim.kill()
                await at(up_at)
                mark(f"restart {victim.name}")
                victim.start()
                healthy = await wait_healthy(session, victim.url + "/health", 60)
                mark(f"{victim.name} healthy")
                recovery[victim.name] = healthy
                outages[victim.name] = (killed, healthy)
            await at(0.90)
            mark("stop load")
            load.stop.set()
            await asyncio.wait_for(asyncio.gather(*workers), timeout=60)
            counters = await gateway_counters(session, gateway.url)
    finally:
        for proc in reversed(procs):
            proc.stop()

    return summarize(load.results, t0, outages, recovery, counters, events, workdir)


def summarize(
    results: list[Result],
    t0: float,
    outages: dict[str, tuple[float, float]],
    recovery: dict[str, float],
    counters: dict[str, float],
    events: list[tuple[float, str]],
    workdir: Path,
) -> dict[str, object]:
    def phase_of(r: Result) -> str:
        for name, (down, up) in outages.items():
            if down <= r.started <= up:
                return f"{name} down"
        return "steady"

    phases: dict[str, dict[str, object]] = {}
    for name in ["steady", *(f"{n} down" for n in outages)]:
        chosen = [r for r in results if phase_of(r) == name]
        ok = [r.seconds for r in chosen if r.outcome == "ok"]
        counts: dict[str, int] = {}
        for r in chosen:
            counts[r.outcome] = counts.get(r.outcome, 0) + 1
        phases[name] = {
            "requests": len(chosen),
            "outcomes": counts,
            "p50_s": round(statistics.median(ok), 3) if ok else None,
            "p99_s": round(percentile(ok, 99), 3) if ok else None,
        }
    returned: dict[str, float | None] = {}
    for name, healthy in recovery.items():
        back = [
            r.headers_at
            for r in results
            if r.node == name and r.headers_at is not None and r.started >= healthy
        ]
        returned[name] = round(min(back) - healthy, 2) if back else None
    bad = [
        {"at_s": round(r.started - t0, 2), "outcome": r.outcome, "node": r.node, "detail": r.detail}
        for r in results
        if r.outcome not in ("ok",)
    ]
    return {
        "requests": len(results),
        "phases": phases,
        "back_on_recovered_node_s": returned,
        "gateway_counters": counters,
        "timeline": [(round(t, 1), what) for t, what in events],
        "not_ok": bad[:40],
        "logs": str(workdir),
    }


async def bounded(args: argparse.Namespace) -> dict[str, object]:
    # Start-up (model loading) and draining are bounded too: the run always stops by itself.
    async with asyncio.timeout(args.duration_s + 300):
        return await run(args)


def main(argv: list[str]) -> int:
    if argv[:1] == ["cloud"]:
        parser = argparse.ArgumentParser(prog="chaos.py cloud")
        parser.add_argument("--port", type=int, required=True)
        asyncio.run(_serve_cloud(parser.parse_args(argv[1:]).port))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=80.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--stream-share", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    report = asyncio.run(bounded(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    phases = report["phases"]
    assert isinstance(phases, dict)
    truncated = sum(int(p["outcomes"].get("truncated_success", 0)) for p in phases.values())
    return 1 if truncated else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
