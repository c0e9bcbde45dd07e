"""Gateway overhead: the same fast upstream called directly and through the gateway.

Starts a minimal OpenAI-compatible upstream and the real gateway (`python -m gateway
serve`) as separate processes on loopback, then measures from this process, in one run:
non-streaming latency (p50/p99) and throughput, and streaming time to first chunk, at
concurrency 1 and 16. Prints the figures and the gateway's added latency.

    .venv/bin/python bench/overhead.py [--requests 2000] [--concurrency 1 16]

``--tracing`` measures the gateway twice, with tracing off and then on (every request
traced: OTEL_TRACES_EXPORTER=otlp, batch export over OTLP/HTTP to a local sink process
that accepts and discards the spans), and prints both tables and the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from _common import free_port, wait_ready  # bench/ is the script directory
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.stack.processes import die_with_parent  # noqa: E402  (no server outlives a kill)

MODEL = "bench-model"
COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
).encode()
CHUNKS = [
    json.dumps(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
        }
    )
    for word in ("Hello", " there", ".")
] + [
    json.dumps(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
    ),
    json.dumps(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        }
    ),
]
STREAM_BODY = b"".join(b"data: " + c.encode() + b"\n\n" for c in CHUNKS) + b"data: [DONE]\n\n"
REQUEST = {"model": "auto", "messages": [{"role": "user", "content": "Say hello in one word."}]}


def serve_upstream(port: int) -> None:
    """The fast upstream: a canned answer, no model."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.Response(body=COMPLETION, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(STREAM_BODY)
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


POLICY = """version: 1
tiers:
  edge:
    max_concurrency_per_node: 256
    nodes: [{{url: "http://127.0.0.1:{port}", model: "{model}", name: edge-1}}]
  cloud:
    nodes: []
routing:
  classifier: {{kind: {classifier}}}
fallback:
  stream_internally: {stream_internally}
"""


@dataclass
class Result:
    latencies_s: list[float]
    wall_s: float

    def pct(self, q: float) -> float:
        data = sorted(self.latencies_s)
        return data[min(len(data) - 1, int(q * len(data)))] * 1000

    @property
    def rps(self) -> float:
        return len(self.latencies_s) / self.wall_s


async def run_load(url: str, *, stream: bool, concurrency: int, requests: int) -> Result:
    body = json.dumps({**REQUEST, "stream": stream}).encode()
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    remaining = requests
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    if stream:
                        await response.content.readline()  # time to the first chunk
                        latencies.append(time.perf_counter() - start)
                        await response.read()
                    else:
                        await response.read()
                        latencies.append(time.perf_counter() - start)
                    if response.status != 200:
                        raise RuntimeError(f"status {response.status} from {url}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return Result(latencies, wall)


async def main_async(args: argparse.Namespace) -> None:
    upstream_port = free_port()
    policy = Path(tempfile.mkdtemp()) / "bench-policy.yaml"
    policy.write_text(
        POLICY.format(
            port=upstream_port,
            model=MODEL,
            classifier=args.classifier,
            stream_internally="false" if args.plain_non_stream else "true",
        )
    )
    # Without --tracing the gateway runs as the environment says (OTEL_* included).
    configs: list[tuple[str, dict[str, str]]] = [("", {})]
    helpers = [[sys.executable, __file__, "--serve-upstream", str(upstream_port)]]
    if args.tracing:
        sink_port = free_port()
        helpers.append([sys.executable, __file__, "--serve-otlp-sink", str(sink_port)])
        off = {"OTEL_TRACES_EXPORTER": "none", "OTEL_SDK_DISABLED": "true"}
        on = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_SDK_DISABLED": "false",
        }
        configs = [("tracing off", off), ("tracing on (OTLP/HTTP, every request)", on)]
    # They start in the background while this process waits for them to answer.
    processes = [subprocess.Popen(argv, preexec_fn=die_with_parent()) for argv in helpers]  # noqa: ASYNC220
    try:
        await wait_ready(f"http://127.0.0.1:{upstream_port}/health")
        results = []
        for title, extra in configs:
            results.append(await measure_gateway(args, policy, upstream_port, title, extra))
        if len(results) == 2:
            print_difference(args, *results)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=10)


async def measure_gateway(
    args: argparse.Namespace,
    policy: Path,
    upstream_port: int,
    title: str,
    extra_env: dict[str, str],
) -> dict[tuple[bool, int], Result]:
    """Start a gateway with ``extra_env``, print its table; the gateway figures by
    (stream, concurrency)."""
    gateway_port = free_port()
    env = {
        **os.environ,
        "GATEWAY_POLICY": str(policy),
        "GATEWAY_PORT": str(gateway_port),
        "GATEWAY_LOG_LEVEL": "WARNING",
        **extra_env,
        **dict(kv.split("=", 1) for kv in args.env),
    }
    gateway = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "gateway", "serve"], cwd=ROOT, env=env, preexec_fn=die_with_parent()
    )
    figures: dict[tuple[bool, int], Result] = {}
    try:
        await wait_ready(f"http://127.0.0.1:{gateway_port}/readyz")
        direct = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
        through = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
        if title:
            print(f"\n== {title}")
        print(f"requests per measurement: {args.requests}; classifier: {args.classifier}")
        header = (
            f"{'mode':<11}{'conc':>5} | {'direct p50':>10} {'p99':>7} {'rps':>7} | "
            f"{'gateway p50':>11} {'p99':>7} {'rps':>7} | {'added p50':>9} {'added p99':>9}"
        )
        print(header)
        print("-" * len(header))
        for stream in (False, True):
            for concurrency in args.concurrency:
                # Warm up both paths (connections, caches), then alternate to spread noise.
                for url in (direct, through):
                    await run_load(url, stream=stream, concurrency=concurrency, requests=100)
                d = await run_load(
                    direct, stream=stream, concurrency=concurrency, requests=args.requests
                )
                g = await run_load(
                    through, stream=stream, concurrency=concurrency, requests=args.requests
                )
                figures[(stream, concurrency)] = g
                mode = "stream TTFC" if stream else "non-stream"
                print(
                    f"{mode:<11}{concurrency:>5} | {d.pct(0.5):>8.2f}ms {d.pct(0.99):>5.2f}ms "
                    f"{d.rps:>7.0f} | {g.pct(0.5):>9.2f}ms {g.pct(0.99):>5.2f}ms {g.rps:>7.0f} | "
                    f"{g.pct(0.5) - d.pct(0.5):>7.2f}ms {g.pct(0.99) - d.pct(0.99):>7.2f}ms"
                )
        print(f"(one run; machine: {os.cpu_count()} cores shared by client, gateway and upstream)")
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)  # tracing on: the last spans are flushed on the way out
    return figures


def print_difference(
    args: argparse.Namespace,
    off: dict[tuple[bool, int], Result],
    on: dict[tuple[bool, int], Result],
) -> None:
    print("\n== tracing on minus tracing off (gateway figures)")
    header = (
        f"{'mode':<11}{'conc':>5} | {'p50 off':>8} {'p50 on':>8} {'delta':>7} | "
        f"{'p99 off':>8} {'p99 on':>8} {'delta':>7} | {'rps off':>7} {'rps on':>7} {'change':>7}"
    )
    print(header)
    print("-" * len(header))
    for (stream, concurrency), a in off.items():
        b = on[(stream, concurrency)]
        mode = "stream TTFC" if stream else "non-stream"
        print(
            f"{mode:<11}{concurrency:>5} | {a.pct(0.5):>6.2f}ms {b.pct(0.5):>6.2f}ms "
            f"{b.pct(0.5) - a.pct(0.5):>+5.2f}ms | {a.pct(0.99):>6.2f}ms {b.pct(0.99):>6.2f}ms "
            f"{b.pct(0.99) - a.pct(0.99):>+5.2f}ms | {a.rps:>7.0f} {b.rps:>7.0f} "
            f"{(b.rps / a.rps - 1) * 100:>+6.1f}%"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--classifier", default="heuristic", choices=["heuristic", "learned"])
    parser.add_argument("--env", nargs="*", default=[], help="extra KEY=VALUE for the gateway")
    parser.add_argument(
        "--plain-non-stream",
        action="store_true",
        help="policy fallback.stream_internally: false (non-streaming requests are relayed as "
        "one JSON answer instead of being fetched as streams and assembled)",
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="measure the gateway with tracing off, then on (OTLP/HTTP to a local sink)",
    )
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-otlp-sink", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    if args.serve_otlp_sink:
        serve_otlp_sink(args.serve_otlp_sink)
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
