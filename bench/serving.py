"""Serving benchmark: a concurrency sweep against OpenAI-compatible chat endpoints.

    python bench/serving.py [--concurrency 1,2,4,8,16] [--requests-per-client 3]
                            [--max-tokens 64] [--rounds 1] [--n-threads 1] [--parallel 8]
                            [--model PATH] [--json PATH] [--plots DIR] [--deadline-s 1500]
    python bench/serving.py --target NAME=URL[@PID] [--target ...] [--model-name NAME]

Without ``--target`` it starts two edge nodes on the same model and settings, the
one-at-a-time node (``--parallel 1``) and the batching node (``--parallel N``), and
measures both in the same run, alternating which goes first at every concurrency level
(these machines are shared and drift). ``--target`` measures any OpenAI-compatible server
instead (an edge node, vLLM, the gateway: URL is the base without ``/v1``); with ``@PID``
its resident memory is read from ``/proc/PID`` (same machine only).

At each concurrency level c, c clients each send ``--requests-per-client`` streaming
requests back to back (a closed loop), every one with its own prompt, ``max_tokens``
tokens and ``ignore_eos`` (vLLM's extension, which the edge node honours) so every
answer has the same length. Per level it reports: time to first token (TTFT),
inter-token latency (ITL: time between content chunks divided by the tokens they
carry), tokens/s per request (after its first token) and in total (completion tokens
over the level's wall time), p50/p95/p99 end-to-end latency, and the peak resident
memory of the server process during the level (sampled every 50 ms, plus VmHWM). With
a PID it also reports the server's CPU seconds per level and completion tokens per CPU
second, steadier than wall-clock figures on a machine shared with other work (but a
multi-threaded llama.cpp spins while it waits for a descheduled thread, which counts).

Writes the JSON (every request's figures included) and two PNG plots: total throughput
against p99 latency across concurrency, and the TTFT distribution per level.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import sse_events
from bench._serving_report import level_summary, plot, print_table
from tests.fixtures.edge import start_edge_node, stop_edge_node

TOPICS = (
    "a lighthouse keeper",
    "a city under snow",
    "the first day of school",
    "a chess tournament",
    "a river that changes course",
    "an old clock",
    "bees in a garden",
    "a train at night",
)


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    url: str
    pid: int | None


@dataclass(slots=True)
class RequestResult:
    ok: bool
    status: int
    ttft_s: float | None
    e2e_s: float
    completion_tokens: int
    decode_tps: float | None
    itl_s: list[float]
    error: str = ""


def prompt(nonce: str, index: int) -> list[dict[str, str]]:
    topic = TOPICS[index % len(TOPICS)]
    return [{"role": "user", "content": f"({nonce}) Write a long story about {topic}."}]


async def one_request(
    http: aiohttp.ClientSession, target: Target, model: str, max_tokens: int, index: int
) -> RequestResult:
    body = {
        "model": model,
        "messages": prompt(uuid.uuid4().hex[:8], index),
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    started = time.perf_counter()
    first: float | None = None
    last = started
    itl: list[float] = []
    completion = 0
    async with http.post(f"{target.url}/v1/chat/completions", json=body) as response:
        if response.status != 200:
            text = (await response.text())[:200]
            return RequestResult(False, response.status, None, 0.0, 0, None, [], text)
        async for event in sse_events(response):
            if event.get("usage"):
                completion = int(event["usage"]["completion_tokens"])
            choices = event.get("choices") or []
            if not choices or not choices[0].get("delta", {}).get("content"):
                continue
            now = time.perf_counter()
            if first is None:
                first = now
            else:
                itl.append(now - last)
            last = now
    ended = time.perf_counter()
    decode_tps = (completion - 1) / (last - first) if first and completion > 1 else None
    # A chunk may carry several tokens (the node coalesces what is ready): spread them.
    chunks = len(itl) + 1
    per_chunk = completion / chunks if completion and chunks else 1.0
    itl = [gap / per_chunk for gap in itl]
    ttft = None if first is None else first - started
    return RequestResult(True, 200, ttft, ended - started, completion, decode_tps, itl)


def read_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in {"VmRSS", "VmHWM"}:
            fields[name] = int(value.split()[0]) * 1024
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


async def sample_rss(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], read_rss(pid)[0])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def run_level(
    target: Target, model: str, concurrency: int, per_client: int, max_tokens: int
) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    results: list[RequestResult] = []
    peak = [0]
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(target.pid, peak, stop)) if target.pid else None
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:

        async def client(c: int) -> None:
            for r in range(per_client):
                results.append(await one_request(http, target, model, max_tokens, c + r))

        cpu_before = read_cpu_s(target.pid) if target.pid else None
        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(concurrency)))
        wall = time.perf_counter() - started
        cpu_s = None
        if target.pid is not None and cpu_before is not None:
            cpu_s = read_cpu_s(target.pid) - cpu_before
    stop.set()
    if sampler is not None:
        await sampler
    hwm = read_rss(target.pid)[1] if target.pid else None
    summary = level_summary(results, wall)
    tokens = summary["completion_tokens"]
    summary.update(
        server_cpu_s=cpu_s,
        tokens_per_cpu_s=tokens / cpu_s if cpu_s else None,
        concurrency=concurrency,
        peak_rss_bytes=peak[0] or None,
        process_hwm_bytes=hwm,
        requests=[asdict(r) for r in results],
    )
    return summary


async def sweep(
    targets: list[Target], args: argparse.Namespace, deadline: float
) -> dict[str, list[dict[str, Any]]]:
    levels: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    for target in targets:  # warm-up: the first request of a process pays for page faults
        await run_level(target, args.model_name, 1, 1, 8)
    flip = False
    for rnd in range(args.rounds):
        for concurrency in args.concurrency:
            order = list(reversed(targets)) if flip else targets
            flip = not flip
            for target in order:
                if time.monotonic() > deadline:
                    print("deadline reached; stopping the sweep", file=sys.stderr)
                    return levels
                level = await run_level(
                    target, args.model_name, concurrency, args.requests_per_client, args.max_tokens
                )
                level["round"] = rnd
                levels[target.name].append(level)
                print(
                    f"  round {rnd} {target.name:>8} c={concurrency:<3} "
                    f"total {level['total_tokens_per_s']:7.1f} tok/s  "
                    f"p99 e2e {level['e2e_s']['p99']:6.2f} s  "
                    f"p99 ttft {level['ttft_s']['p99']:6.2f} s  errors {level['errors']}",
                    flush=True,
                )
    return levels


def parse_target(text: str) -> Target:
    name, _, rest = text.partition("=")
    url, _, pid = rest.partition("@")
    if not name or not url:
        raise argparse.ArgumentTypeError(f"expected NAME=URL[@PID], got {text!r}")
    return Target(name=name, url=url.rstrip("/"), pid=int(pid) if pid else None)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", action="append", type=parse_target, default=[])
    parser.add_argument("--model-name", default="edge", help="the request's model field")
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16]
    )
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--model", help="GGUF for the nodes the bench starts")
    parser.add_argument("--n-threads", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--node-arg", action="append", default=[], help="extra node option")
    parser.add_argument("--json", type=Path, default=Path("docs/serving.json"))
    parser.add_argument("--plots", type=Path, default=Path("docs"))
    parser.add_argument("--deadline-s", type=float, default=1500)
    return parser.parse_args()


async def main() -> int:
    args = parse_args()
    deadline = time.monotonic() + args.deadline_s
    started: list[subprocess.Popen[bytes]] = []
    targets: list[Target] = list(args.target)
    try:
        if not targets:
            common = ["--n-threads", str(args.n_threads), "--max-queue", "16", *args.node_arg]
            if args.model:
                common += ["--model", args.model]
            logs = Path(tempfile.mkdtemp(prefix="serving-bench-"))
            for name, parallel in (("serial", 1), ("batched", args.parallel)):
                process, node = start_edge_node(
                    logs / f"{name}.log", extra_args=[*common, "--parallel", str(parallel)]
                )
                started.append(process)
                targets.append(Target(name=name, url=node.url, pid=process.pid))
        print(f"targets: {', '.join(f'{t.name}={t.url}' for t in targets)}", flush=True)
        levels = await sweep(targets, args, deadline)
    finally:
        for process in started:
            stop_edge_node(process)
    command = "python bench/serving.py " + " ".join(sys.argv[1:])
    print_table(levels)
    for path in plot(levels, args.plots, command.strip()):
        print(f"wrote {path}")
    report = {"command": command.strip(), "settings": _settings(args), "targets": levels}
    for target_levels in levels.values():
        for level in target_levels:
            for request in level["requests"]:
                # Every gap of every request would make the file megabytes: keep the mean
                # (the level's ITL percentiles are in the level's summary).
                gaps = request.pop("itl_s")
                request["itl_mean_s"] = sum(gaps) / len(gaps) if gaps else None
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")
    return 0


def _settings(args: argparse.Namespace) -> dict[str, object]:
    keys = ("concurrency", "requests_per_client", "max_tokens", "rounds", "n_threads", "parallel")
    settings: dict[str, object] = {key: getattr(args, key) for key in keys}
    settings["model"] = args.model or "default (SmolLM2-135M-Instruct Q4_1)"
    settings["node_args"] = args.node_arg
    return settings


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
