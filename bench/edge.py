"""Edge node benchmark: the node over HTTP (streaming) versus llama.cpp in-process.

    python bench/edge.py [--model PATH] [--n-ctx 2048] [--n-threads N] [--n-gpu-layers 0]
                         [--max-tokens 128] [--rounds 7] [--parallel 1] [--deadline-s 300]

In one run, with the same model settings on both sides (``--parallel 1``, the default:
the node's one-at-a-time engine; ``bench/serving.py`` measures the batching engine):

1. decode speed (tokens/s after the first token) and time to first token, for the node
   (``POST /v1/chat/completions``, stream, ``ignore_eos`` so both sides decode exactly
   ``--max-tokens``) and for ``llama_cpp.Llama.generate`` called directly; rounds
   alternate which side goes first, and every round uses a fresh prompt so neither
   side gets a prompt-cache hit; medians are reported, and the node/direct ratio is
   the median of the per-round ratios (paired rounds cancel most of the drift a busy
   machine adds; target: the node keeps >= 95 % of direct decode speed). CPU seconds
   per request (the node process's, from /proc, versus the bench process's for the
   direct call) are reported too: on a crowded machine they show the node's own
   overhead far more steadily than wall-clock speed does;
2. second-turn time to first token on the node: cold (no shared prefix), warm from the
   live KV state (turn 2 right after turn 1), and warm from the RAM prompt cache (turn
   2 after another conversation replaced the live state).

Bounded: every phase checks ``--deadline-s`` and the node subprocess is terminated by
its PID at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_node.model import ChatModel, load_model
from edge_node.schema import PromptMessage
from edge_node.settings import Settings, default_model_path
from tests.fixtures.edge import EdgeNodeProcess, start_edge_node, stop_edge_node

QUESTION = "Write a long story about a lighthouse keeper and a storm."
HISTORY = " ".join(
    f"Fact {i}: the lighthouse has {i} steps painted color {i % 7}." for i in range(40)
)


@dataclass(frozen=True, slots=True)
class Run:
    ttft_s: float
    decode_tps: float
    tokens: int
    prompt_tokens: int = 0
    cached_tokens: int = 0
    cpu_s: float = 0.0


def messages(nonce: str) -> list[dict[str, str]]:
    # A nonce at the start of the prompt defeats prefix caching on both sides.
    return [
        {"role": "system", "content": f"Session {nonce}. You are a storyteller."},
        {"role": "user", "content": QUESTION},
    ]


def direct_run(model: ChatModel, nonce: str, max_tokens: int) -> Run:
    llm = model.llm
    prompt = model.prompt_tokens([PromptMessage(**m) for m in messages(nonce)])
    cpu_before = time.process_time()
    started = time.perf_counter()
    first = last = started
    count = 0
    for token in llm.generate(prompt, temp=0.0, top_p=0.95):
        last = time.perf_counter()
        if count == 0:
            first = last
        model.piece(token)  # the node detokenizes every token too
        count += 1
        if count >= max_tokens:
            break
    cpu_s = time.process_time() - cpu_before
    return Run(first - started, (count - 1) / (last - first), count, len(prompt), 0, cpu_s)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def node_run_cpu(
    http: aiohttp.ClientSession, node: EdgeNodeProcess, msgs: list[dict[str, str]], max_tokens: int
) -> Run:
    """node_run plus the CPU time the node process spent on it (HTTP, SSE, engine, model)."""
    before = process_cpu_s(node.pid)
    run = await node_run(http, node.url, msgs, max_tokens)
    return dataclasses.replace(run, cpu_s=process_cpu_s(node.pid) - before)


async def node_run(
    http: aiohttp.ClientSession, url: str, msgs: list[dict[str, str]], max_tokens: int
) -> Run:
    body = {
        "model": "edge",
        "messages": msgs,
        "max_tokens": max_tokens,
        "temperature": 0,
        "top_p": 0.95,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    started = time.perf_counter()
    first = end = 0.0
    usage: dict[str, int] = {}
    async with http.post(f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            now = time.perf_counter()
            if chunk.get("usage"):
                reported = chunk["usage"]
                usage = {
                    "completion_tokens": reported["completion_tokens"],
                    "prompt_tokens": reported["prompt_tokens"],
                    "cached_tokens": reported["prompt_tokens_details"]["cached_tokens"],
                }
            elif chunk["choices"][0]["finish_reason"] is not None:
                end = now
            elif chunk["choices"][0]["delta"].get("content") and not first:
                first = now
    tokens = usage["completion_tokens"]
    tps = (tokens - 1) / (end - first) if end > first else 0.0
    return Run(first - started, tps, tokens, usage["prompt_tokens"], usage["cached_tokens"])


async def turn_two(http: aiohttp.ClientSession, url: str, mode: str) -> Run:
    """A conversation's second turn (a history of ~600 tokens), cold or warm."""
    nonce = uuid.uuid4().hex[:8]
    turn1 = [
        {"role": "system", "content": f"Session {nonce}. You answer briefly."},
        {"role": "user", "content": f"Remember these facts. {HISTORY} Which fact is first?"},
    ]
    turn2 = [
        *turn1,
        {"role": "assistant", "content": "Fact 0."},
        {"role": "user", "content": "And?"},
    ]
    if mode != "cold":
        await node_run(http, url, turn1, 4)
    if mode == "saved":
        # A short other conversation is enough to replace the live KV state.
        other = [
            {"role": "system", "content": f"Other {nonce}."},
            {"role": "user", "content": "Hi"},
        ]
        await node_run(http, url, other, 4)  # replaces the live KV state
    return await node_run(http, url, turn2, 4)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(
    args: argparse.Namespace, direct: list[Run], served: list[Run], cache: dict[str, list[Run]]
) -> float:
    """Print the figures as markdown tables; returns the median per-round decode ratio."""
    direct_tps, node_tps = (
        median([r.decode_tps for r in direct]),
        median([r.decode_tps for r in served]),
    )
    direct_ttft, node_ttft = median([r.ttft_s for r in direct]), median([r.ttft_s for r in served])
    ratios = sorted(s.decode_tps / d.decode_tps for d, s in zip(direct, served, strict=True))
    ratio = median(ratios)
    print(
        f"model: {args.model.name}  n_ctx={args.n_ctx}  n_threads={args.n_threads or 'default'}  "
        f"n_gpu_layers={args.n_gpu_layers}  max_tokens={args.max_tokens}  rounds={len(direct)}"
    )
    counts = sorted({r.tokens for r in direct}), sorted({r.tokens for r in served})
    print(f"tokens per request: direct {counts[0]}, node {counts[1]}")
    print("| measure (median) | direct llama_cpp | edge node (HTTP, SSE) | node / direct |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| decode tokens/s | {direct_tps:.1f} | {node_tps:.1f} | {ratio:.1%} |")
    print(
        f"| time to first token (ms) | {direct_ttft * 1e3:.1f} | {node_ttft * 1e3:.1f} | "
        f"{node_ttft / direct_ttft:.2f}x |"
    )
    direct_cpu, node_cpu = median([r.cpu_s for r in direct]), median([r.cpu_s for r in served])
    print(
        f"| CPU seconds per request | {direct_cpu:.3f} | {node_cpu:.3f} | "
        f"{node_cpu / direct_cpu:.3f}x |"
    )
    print(f"per-round decode ratios node/direct (sorted): {', '.join(f'{r:.1%}' for r in ratios)}")
    print(
        f"CPU-bound estimate of the decode speed kept (direct CPU / node CPU per request): "
        f"{direct_cpu / node_cpu:.1%}"
    )
    print()
    print("| second turn (node) | prompt tokens | from cache | time to first token (ms) |")
    print("| --- | ---: | ---: | ---: |")
    for mode, label in [
        ("cold", "cold (no shared prefix)"),
        ("live", "warm: live KV state"),
        ("saved", "warm: restored from the RAM prompt cache"),
    ]:
        runs = cache[mode]
        ttft_ms = median([r.ttft_s for r in runs]) * 1e3
        prompt = median([float(r.prompt_tokens) for r in runs])
        cached = median([float(r.cached_tokens) for r in runs])
        print(f"| {label} | {prompt:.0f} | {cached:.0f} | {ttft_ms:.1f} |")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return ratio


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--n-threads", type=int, default=None)
    parser.add_argument("--n-gpu-layers", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--parallel", type=int, default=1, help="the node's --parallel (1: one at a time)"
    )
    parser.add_argument("--deadline-s", type=float, default=300.0)
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}  load average at start: {os.getloadavg()[0]:.2f}")
    deadline = time.monotonic() + args.deadline_s
    settings = Settings(
        model_path=args.model,
        n_ctx=args.n_ctx,
        n_threads=args.n_threads,
        n_gpu_layers=args.n_gpu_layers,
        parallel=args.parallel,
    )
    node_args = ["--model", str(args.model), "--n-gpu-layers", str(args.n_gpu_layers)]
    node_args += ["--parallel", str(args.parallel)]
    if args.n_threads is not None:
        node_args += ["--n-threads", str(args.n_threads)]

    with tempfile.TemporaryDirectory() as tmp:
        process, node = start_edge_node(
            Path(tmp) / "node.log", n_ctx=args.n_ctx, extra_args=node_args
        )
        model = load_model(settings)
        try:
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                await node_run(http, node.url, messages("warmup"), 8)  # first-request costs
                direct_run(model, "warmup", 8)
                direct: list[Run] = []
                served: list[Run] = []
                for i in range(args.rounds):
                    if time.monotonic() > deadline:
                        print(f"deadline reached after {i} rounds")
                        break
                    nonce = uuid.uuid4().hex[:8]
                    if i % 2 == 0:
                        direct.append(direct_run(model, nonce, args.max_tokens))
                        served.append(
                            await node_run_cpu(http, node, messages(nonce), args.max_tokens)
                        )
                    else:
                        served.append(
                            await node_run_cpu(http, node, messages(nonce), args.max_tokens)
                        )
                        direct.append(direct_run(model, nonce, args.max_tokens))
                cache: dict[str, list[Run]] = {"cold": [], "live": [], "saved": []}
                for _ in range(2):
                    for mode in cache:
                        if time.monotonic() < deadline:
                            cache[mode].append(await turn_two(http, node.url, mode))
        finally:
            model.close()
            stop_edge_node(process)

    if not direct:
        print("no complete round within the deadline")
        return 1
    ratio = report(args, direct, served, cache)
    verdict = "PASS" if ratio >= 0.95 else "FAIL"
    print(f"\ndecode speed kept by the node: {ratio:.1%} (target >= 95%): {verdict}")
    return 0 if ratio >= 0.95 else 2


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
