"""Two gateways side by side: their CPU per request, paired, to see changes of 1% or less.

``bench/overhead.py`` measures one server at a time. On a shared or virtual machine the
CPU a request costs drifts by 10-30% from minute to minute (the host's other work, steal
time), which hides any change smaller than a few percent. Here gateway A (this tree) and
gateway B (``--tree-b``, or this tree again with ``--env-b``/``--policy-b``) run at the same
time, pinned to the same core, each under its own load of the same requests: whatever the
machine does to one it does to the other. Each round reads both processes' CPU over the
same window and keeps the ratio B/A; the report is the mean ratio with its 95% interval.
An A/A run (both the same) reads 1.00 within +-0.005 on the 2-CPU development machine.

Both share the core, so each pays for the other's cache misses: absolute figures are
higher than ``bench/overhead.py``'s and only the ratio is the result. A and B swap ports
every process pair; ``--processes`` pairs are started one after the other, since a process
has its own layout of memory.

    .venv/bin/python bench/paired_ab.py --tree-b /tmp/base [--processes 4] [--rounds 3]
    .venv/bin/python bench/paired_ab.py --env-b GATEWAY_EVENT_LOOP=asyncio
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # PYTHONPATH, if set, goes first

from _common import free_port, wait_ready  # bench/ is the script directory
from _overhead_load import Cell, measure, verify
from overhead import (
    BENCH,
    REPO,
    clean_env,
    cores,
    describe_machine,
    gateway_env,
    git_revision,
    spawn,
)


async def run(args: argparse.Namespace) -> None:
    server_cpus, load_cpus = cores()
    os.sched_setaffinity(0, load_cpus)
    tree_b = Path(args.tree_b) if args.tree_b else REPO
    print(f"A: {REPO} ({git_revision(REPO)}) {' '.join(args.env_a)} {args.policy_a or ''}")
    print(f"B: {tree_b} ({git_revision(tree_b)}) {' '.join(args.env_b)} {args.policy_b or ''}")
    print(f"machine: {describe_machine()}; gateways on CPU {server_cpus}, load on {load_cpus}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-paired-"))
    upstream_port = free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    argv = [sys.executable, str(BENCH / "_overhead_upstream.py"), "--port", str(upstream_port)]
    upstream_process = spawn(argv, env=clean_env(), cpus=load_cpus, log=workdir / "upstream.log")
    cells = [Cell(stream, c) for stream in args.stream for c in args.concurrency]
    ratios: dict[Cell, list[float]] = {cell: [] for cell in cells}
    cpu: dict[tuple[Cell, str], list[float]] = {}
    try:
        await wait_ready(upstream + "/health")
        for pair in range(args.processes):
            arms = {
                "A": (REPO, args.policy_a, args.env_a),
                "B": (tree_b, args.policy_b, args.env_b),
            }
            processes: dict[str, subprocess.Popen[bytes]] = {}
            urls: dict[str, str] = {}
            for name in ("A", "B") if pair % 2 == 0 else ("B", "A"):  # who gets the first port
                tree, policy, extra = arms[name]
                port = free_port()
                policy_file = Path(policy) if policy else tree / "policies" / "default.yaml"
                settings = dict(kv.split("=", 1) for kv in extra)
                env = gateway_env(tree, policy_file, upstream, port, settings)
                argv = [sys.executable, "-m", "gateway", "serve"]
                log = workdir / f"{name}{pair}.log"
                processes[name] = spawn(argv, env=env, cpus=server_cpus, log=log, cwd=tree)
                urls[name] = f"http://127.0.0.1:{port}"
            try:
                for url in urls.values():
                    await wait_ready(url + "/readyz")
                    for cell in cells:
                        await verify(url, cell)
                for cell in cells:
                    await both(urls, processes, cell, args.warmup, b_first=False)
                    for round_no in range(args.rounds):
                        b_first = (pair * args.rounds + round_no) % 2 == 1
                        a, b = await both(urls, processes, cell, args.requests, b_first=b_first)
                        ratios[cell].append(b / a)
                        cpu.setdefault((cell, "A"), []).append(a)
                        cpu.setdefault((cell, "B"), []).append(b)
            finally:
                for process in processes.values():
                    process.send_signal(signal.SIGTERM)
                    process.wait(timeout=30)
            print(f"process pair {pair + 1} of {args.processes} done", flush=True)
    finally:
        upstream_process.send_signal(signal.SIGTERM)
        upstream_process.wait(timeout=30)
    report(cells, ratios, cpu)


async def both(
    urls: dict[str, str],
    processes: dict[str, subprocess.Popen[bytes]],
    cell: Cell,
    n: int,
    *,
    b_first: bool,
) -> tuple[float, float]:
    """CPU ms per request of A and B, loaded at the same time. The load started first ends
    first, and the other's last requests then have the core alone: every other round
    starts B first, so that edge cancels out."""
    order = "BA" if b_first else "AB"
    samples = await asyncio.gather(
        *(measure(urls[k], cell, processes[k].pid, requests=n, session_prefix=None) for k in order)
    )
    cpu = {k: s.cpu_ms_per_request or 0.0 for k, s in zip(order, samples, strict=True)}
    return cpu["A"], cpu["B"]


def report(
    cells: list[Cell], ratios: dict[Cell, list[float]], cpu: dict[tuple[Cell, str], list[float]]
) -> None:
    print("\n| cell | A ms/request | B ms/request | B/A, mean +- 95% | median | rounds |")
    print("|---|---:|---:|---:|---:|---:|")
    for cell in cells:
        r = ratios[cell]
        half = 1.96 * statistics.stdev(r) / len(r) ** 0.5 if len(r) > 1 else float("nan")
        a, b = (statistics.median(cpu[cell, k]) for k in "AB")
        print(
            f"| {cell.label} | {a:.3f} | {b:.3f} | {statistics.mean(r):.3f} +- {half:.3f} "
            f"| {statistics.median(r):.3f} | {len(r)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree-b", help="checkout B runs from (default: this one)")
    parser.add_argument("--env-a", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--env-b", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--policy-a", help="policy file of A (default: its tree's shipped one)")
    parser.add_argument("--policy-b", help="policy file of B (default: its tree's shipped one)")
    parser.add_argument("--stream", type=lambda s: s == "true", nargs="+", default=[False])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16])
    parser.add_argument("--processes", type=int, default=4, help="process pairs, one by one")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per pair and cell")
    parser.add_argument("--requests", type=int, default=3000, help="per gateway and round")
    parser.add_argument("--warmup", type=int, default=500)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
