"""Gateway overhead: CPU per request and added latency, beside a bare aiohttp proxy.

One run starts, on loopback: an instant scripted upstream (a real aiohttp server answering
a fixed 20-chunk stream, or one JSON body, with usage), a bare pass-through proxy
(``bench/bare_proxy.py``, the floor of any Python aiohttp hop) and the real gateway
(``python -m gateway serve``) with the shipped ``policies/default.yaml`` (learned
classifier and rules, as shipped; every node pointed at the upstream through
GATEWAY_EDGE_URLS / GATEWAY_CLOUD_URLS). The proxy and the gateways are pinned to one core;
this load generator, the upstream and Redis to the other.

Each round measures every target for every cell (non-stream and stream, at each
concurrency), in alternating order (forward in even rounds, backward in odd ones), and
reads each server's CPU time (all its threads, from /proc) over exactly the measured
window. Printed: CPU per request, req/s, latency (whole answer; time to first chunk for
streams) and what the gateway adds over direct, and the ratio of the gateway's CPU per
request to the bare proxy's, per round (median, min-max).

Targets: direct, bare proxy, gateway (sessions off), gateway with sessions on (a real
redis-server; each conversation four turns) unless ``--no-sessions``, and with
``--tracing`` the gateway with sessions and tracing on (every request exported over
OTLP/HTTP to a local sink), and with ``--keys`` the gateway with an API key from the Redis
key store that has a requests and a tokens limit and a budget (every request admitted by
the limiter and settled in the usage ledger; the key's limits are far above the load).
Tracing is off elsewhere. Logs are the gateway's default (INFO, JSON access lines), written
to a file. Stops by itself: ``--rounds`` rounds of
``--requests`` requests per measurement, or earlier at ``--max-seconds``.
``--baseline-tree DIR`` adds each gateway row again, run from another checkout (marked
``[base]``), so before and after share the same rounds, core and minutes.

    .venv/bin/python bench/overhead.py [--rounds 5] [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # PYTHONPATH, if set, goes first

from _common import cpu_model, free_port, wait_ready  # bench/ is the script directory
from _overhead_load import Cell, Sample, measure, verify
from _overhead_report import print_report
from _overhead_upstream import MODEL

import gateway
from scripts.stack.processes import die_with_parent  # no server outlives a kill

REPO = Path(gateway.__file__).resolve().parents[1]
"""The tree under test: where ``gateway`` was imported from (PYTHONPATH picks another)."""
BENCH = Path(__file__).resolve().parent
PY_SPY = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"


def cores() -> tuple[set[int], set[int]]:
    """(server core, load core): the first two CPUs this process may use."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise SystemExit(
            "needs two CPUs: the servers on one, the load and the upstream on the other"
        )
    return {allowed[0]}, {allowed[1]}


def spawn(
    argv: list[str], *, env: dict[str, str], cpus: set[int], log: Path, cwd: Path = REPO
) -> subprocess.Popen[bytes]:
    """Start ``argv`` pinned to ``cpus`` (every thread it will start inherits the mask)."""
    dies = die_with_parent()

    def preexec() -> None:
        dies()
        os.sched_setaffinity(0, cpus)

    with log.open("ab") as out:
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec
        )


def clean_env() -> dict[str, str]:
    """This environment without the gateway's own variables, so a run depends on its options."""
    drop = ("GATEWAY_", "OTEL_", "REDIS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONPATH"] = str(REPO)
    return env


def gateway_env(
    tree: Path, policy: Path, upstream: str, port: int, settings: Mapping[str, str]
) -> dict[str, str]:
    """The environment of a gateway under test: ``tree``'s code and ``policy``, every node
    pointed at ``upstream``, tracing off unless ``settings`` (applied last) say otherwise."""
    return {
        **clean_env(),
        "PYTHONPATH": str(tree),
        "GATEWAY_POLICY": str(policy),
        "GATEWAY_EDGE_URLS": f"{upstream}={MODEL}-edge",
        "GATEWAY_CLOUD_URLS": f"{upstream}={MODEL}-cloud",
        "OTEL_SDK_DISABLED": "true",
        **settings,
        "GATEWAY_PORT": str(port),
    }


def describe_machine() -> str:
    model = cpu_model() or "?"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{platform.machine()}, {os.cpu_count()} CPUs ({model}), load average {load}"


def git_revision(tree: Path) -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" with uncommitted changes" if dirty else "")


async def run(args: argparse.Namespace) -> None:
    server_cpus, load_cpus = cores()
    os.sched_setaffinity(0, load_cpus)  # this process and what it starts unpinned: upstream, Redis
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    trees = [("", REPO)] + ([("[base]", Path(args.baseline_tree))] if args.baseline_tree else [])
    print(f"command: {' '.join(shlex.quote(a) for a in sys.argv)}")
    for suffix, tree in trees:
        revision, policy = git_revision(tree), policy_of(args, tree)
        print(f"gateway{suffix}: {tree}/gateway ({revision}); policy: {policy}")
    print(f"machine: {describe_machine()}; servers on CPU {server_cpus}, load on CPU {load_cpus}")
    print(f"logs: {workdir} (removed after a run that completes, unless --keep-logs)")
    env = clean_env()
    processes: list[subprocess.Popen[bytes]] = []
    cleanup: list[Path] = []
    redis = None
    try:
        upstream_port = free_port()
        upstream = f"http://127.0.0.1:{upstream_port}"
        argv = [sys.executable, str(BENCH / "_overhead_upstream.py"), "--port", str(upstream_port)]
        processes.append(spawn(argv, env=env, cpus=load_cpus, log=workdir / "upstream.log"))
        proxy_port = free_port()
        argv = [sys.executable, str(BENCH / "bare_proxy.py"), "--port", str(proxy_port)]
        argv += ["--upstream", upstream]
        proxy = spawn(argv, env=env, cpus=server_cpus, log=workdir / "proxy.log")
        processes.append(proxy)
        targets: list[tuple[str, str, int | None]] = [
            ("direct", upstream, None),
            ("bare proxy", f"http://127.0.0.1:{proxy_port}", proxy.pid),
        ]
        redis_url = sink_url = ""
        if not args.no_sessions or args.tracing or args.keys:
            from tests.fixtures.redis import RedisServer

            redis = RedisServer(binary="redis-server", port=free_port(), workdir=workdir)
            redis.start()
            redis_url = redis.url
        if args.tracing:
            sink_port = free_port()
            argv = [sys.executable, str(BENCH / "_overhead_upstream.py"), "--otlp-sink"]
            argv += ["--port", str(sink_port)]
            processes.append(spawn(argv, env=env, cpus=load_cpus, log=workdir / "sink.log"))
            sink_url = f"http://127.0.0.1:{sink_port}"
        auth: dict[str, str] = {}
        for suffix, tree in trees:
            for name, extra in gateway_variants(args, redis_url, sink_url):
                if name == "gateway+keys":
                    auth[name + suffix] = await create_bench_key(redis_url, tree)
                port = free_port()
                settings = {**dict(kv.split("=", 1) for kv in args.env), **extra}
                genv = gateway_env(tree, policy_of(args, tree), upstream, port, settings)
                argv = [sys.executable, "-m", "gateway", "serve"]
                log = workdir / f"{name}{suffix}.log"
                process = spawn(argv, env=genv, cpus=server_cpus, log=log, cwd=tree)
                processes.append(process)
                targets.append((name + suffix, f"http://127.0.0.1:{port}", process.pid))
        await wait_ready(upstream + "/health")
        await wait_ready(f"http://127.0.0.1:{proxy_port}/health")
        for _name, url, _pid in targets[2:]:
            await wait_ready(url + "/readyz")
        await run_rounds(args, targets, started, auth)
        if not args.keep_logs:
            cleanup.append(workdir)  # the servers' logs, once they have stopped
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)  # tracing on: the last spans are flushed on the way out
            except subprocess.TimeoutExpired:
                process.kill()
        if redis is not None:
            redis.stop()
        for path in cleanup:
            shutil.rmtree(path, ignore_errors=True)


def policy_of(args: argparse.Namespace, tree: Path) -> Path:
    """``--policy``, else the policy that ``tree`` ships."""
    return Path(args.policy) if args.policy else tree / "policies" / "default.yaml"


def gateway_variants(
    args: argparse.Namespace, redis_url: str, sink_url: str
) -> list[tuple[str, dict[str, str]]]:
    """(name, environment) of each gateway configuration measured."""
    variants: list[tuple[str, dict[str, str]]] = [("gateway", {})]
    if not args.no_sessions:
        variants.append(("gateway+sessions", {"REDIS_URL": redis_url}))
    if args.tracing:
        tracing = {
            "OTEL_SDK_DISABLED": "false",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink_url,
            "OTEL_TRACES_SAMPLER": "always_on",
        }
        variants.append(("gateway+sessions+tracing", {"REDIS_URL": redis_url, **tracing}))
    if args.keys:
        variants.append(("gateway+keys", {"REDIS_URL": redis_url, "GATEWAY_KEY_STORE": "redis"}))
    return variants


async def create_bench_key(redis_url: str, tree: Path) -> str:
    """A key with every limit on (far above the load), created by ``tree``'s own
    ``python -m gateway keys create``; returns its ``Authorization`` header value."""
    argv = [sys.executable, "-m", "gateway", "keys", "create", "--name", "bench"]
    argv += ["--redis-url", redis_url, "--rpm", str(10**9), "--tpm", str(10**9)]
    argv += ["--budget-usd", "1e6", "--budget-period", "day", "--soft-budget-usd", "5e5"]
    argv += ["--json"]
    env = {**clean_env(), "PYTHONPATH": str(tree)}
    done = await asyncio.to_thread(
        subprocess.run, argv, cwd=tree, env=env, capture_output=True, text=True, check=True
    )
    return "Bearer " + str(json.loads(done.stdout)["key"])


def conversation_prefix(target: str, tag: str) -> str | None:
    """Session ids of ``target``'s requests start with this (None: sends none), unique per
    target, cell and round so every measurement starts fresh conversations."""
    if "sessions" not in target:
        return None
    return "".join(c if c.isalnum() else "-" for c in f"{target}-{tag}")


async def run_rounds(
    args: argparse.Namespace,
    targets: list[tuple[str, str, int | None]],
    started: float,
    auth: dict[str, str],
) -> None:
    cells = [Cell(stream, c) for stream in (False, True) for c in args.concurrency]
    for name, url, _pid in targets:  # every path answers what the upstream said, before timing
        for cell in cells:
            await verify(url, cell, authorization=auth.get(name))
    for cell in cells:  # warm up connections, caches, the classifier
        for name, url, pid in targets:
            prefix = conversation_prefix(name, f"warm-{cell.label}")
            await measure(
                url,
                cell,
                pid,
                requests=args.warmup,
                session_prefix=prefix,
                authorization=auth.get(name),
            )
    print(f"warm-up done; {args.rounds} rounds of {args.requests} requests per measurement")
    profilers = start_profilers(args.profile, targets) if args.profile else []
    try:
        samples, rounds_done = await measure_rounds(args, targets, cells, started, auth)
    finally:
        for profiler in profilers:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file on the way out
        for profiler in profilers:
            profiler.wait(timeout=60)
    print(f"machine after: {describe_machine()}")
    print_report(cells, [name for name, _, _ in targets], samples, rounds_done, args.requests)


async def measure_rounds(
    args: argparse.Namespace,
    targets: list[tuple[str, str, int | None]],
    cells: list[Cell],
    started: float,
    auth: dict[str, str],
) -> tuple[dict[tuple[Cell, str], list[Sample]], int]:
    samples: dict[tuple[Cell, str], list[Sample]] = {}
    deadline = started + args.max_seconds
    rounds_done = 0
    for round_no in range(args.rounds):
        order = targets if round_no % 2 == 0 else targets[::-1]
        for cell in cells:
            for name, url, pid in order:
                prefix = conversation_prefix(name, f"r{round_no}-{cell.label}")
                sample = await measure(
                    url,
                    cell,
                    pid,
                    requests=args.requests,
                    session_prefix=prefix,
                    authorization=auth.get(name),
                )
                samples.setdefault((cell, name), []).append(sample)
        rounds_done += 1
        print(f"round {rounds_done} done at {time.monotonic() - started:.0f} s", flush=True)
        if time.monotonic() > deadline:
            print(f"--max-seconds {args.max_seconds} passed: stopping after {rounds_done} rounds")
            break
    return samples, rounds_done


def start_profilers(
    directory: str, targets: list[tuple[str, str, int | None]]
) -> list[subprocess.Popen[bytes]]:
    """py-spy on every gateway over the measured rounds, collapsed stacks to
    ``directory/<target>.txt`` (it pauses the process to sample: figures of a profiled run
    are not for comparison)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    profilers = []
    for name, _url, pid in targets:
        if name.startswith("gateway") and pid is not None:
            argv = [
                PY_SPY,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--gil",
            ]
            argv += ["--output", str(out / f"{name}.txt")]
            profilers.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
    print(f"profiling {len(profilers)} gateways with py-spy into {out}")
    return profilers


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument(
        "--requests", type=int, default=1000, help="requests per target, cell and round"
    )
    parser.add_argument("--warmup", type=int, default=200, help="requests per target and cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument(
        "--policy",
        help="policy file (default: the tree's shipped policies/default.yaml); its nodes are "
        "replaced by the upstream",
    )  # fmt: skip
    parser.add_argument(
        "--baseline-tree",
        metavar="DIR",
        help="also run each gateway configuration from this checkout (e.g. a git worktree "
        "of an older commit), marked [base], in the same rounds",
    )
    parser.add_argument("--no-sessions", action="store_true", help="skip the sessions-on row")
    parser.add_argument(
        "--tracing", action="store_true",
        help="add the gateway with sessions and tracing on (OTLP/HTTP to a local sink)",
    )  # fmt: skip
    parser.add_argument(
        "--keys", action="store_true",
        help="add the gateway with a Redis key that has limits and a budget (issue 15's cost)",
    )  # fmt: skip
    parser.add_argument("--env", nargs="*", default=[], help="extra KEY=VALUE for the gateways")
    parser.add_argument(
        "--profile", metavar="DIR", help="record each gateway with py-spy (collapsed stacks)"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs")
    parser.add_argument("--max-seconds", type=float, default=900, help="stop after this round")
    args = parser.parse_args()
    if args.policy:
        args.policy = os.path.abspath(args.policy)  # the gateways run in the tree under test
    if args.baseline_tree:
        args.baseline_tree = os.path.abspath(args.baseline_tree)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
