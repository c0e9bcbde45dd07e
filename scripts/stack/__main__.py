"""``python -m scripts.stack``: start the stack, print how to use it, stop it on a signal."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from scripts.stack.config import (
    DEFAULT_POLICY,
    DEFAULT_RUN_DIR,
    DEFAULT_STARTUP_TIMEOUT_S,
    Ports,
    StackCancelled,
    StackConfig,
    StackError,
)
from scripts.stack.startup import Progress, Stack, start_stack


class _StopRequest:
    """Set by SIGINT/SIGTERM and polled by the loops: no exception lands mid-step, so a
    signal can never skip the stop, whatever line it interrupts."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def handle(self, signum: int, frame: object) -> None:
        self.signum = signum

    def is_set(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "nothing"


def main(argv: list[str] | None = None) -> int:
    config = _parse_args(argv)
    stop = _StopRequest()
    signal.signal(signal.SIGINT, stop.handle)
    signal.signal(signal.SIGTERM, stop.handle)
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"[stack {time.monotonic() - started:5.0f} s] {line}", flush=True)

    try:
        stack = start_stack(config, progress=say, cancelled=stop.is_set)
    except StackCancelled:
        say("interrupted during start-up; stopped everything the stack had started")
        return 0
    except StackError as exc:
        print(f"stack: error: {exc}", file=sys.stderr, flush=True)
        return 1
    with stack:
        print(banner(stack, time.monotonic() - started), flush=True)
        code = _supervise(stack, say, stop)
    say("stopped everything the stack had started")
    return code


def _supervise(stack: Stack, say: Progress, stop: _StopRequest) -> int:
    """Run until a signal (status 0) or until a process dies by itself (status 1)."""
    while not stop.is_set():
        dead = stack.first_exited()
        if dead is not None:
            print(
                f"stack: error: {dead.name} exited with status {dead.exited()}; "
                f"log {dead.log_path}:\n{dead.tail()}",
                file=sys.stderr,
                flush=True,
            )
            return 1
        time.sleep(0.2)
    say(f"{stop.name} received: stopping")
    return 0


def banner(stack: Stack, seconds: float) -> str:
    """Where everything runs, and a curl line and an openai snippet to try the gateway."""
    url = stack.gateway_url
    redis_note = "started by the stack" if stack.redis_started else "already running"
    rows = [
        f"  gateway  {url}",
        f"  edge     {stack.edge_url}  model {stack.edge_model} (llama.cpp)",
    ]
    if stack.cloud_url:
        rows.append(
            f"  cloud    {stack.cloud_url}  model {stack.cloud_model} (vLLM, {stack.cloud_build})"
        )
    else:
        rows.append("  cloud    off (--no-cloud): every request runs on the edge")
    rows.append(f"  redis    {stack.redis_url} ({redis_note})")
    rows.append(f"  logs     {_short(stack.config.logs)}/{{gateway,edge,cloud,redis}}.log")
    body = json.dumps(
        {"model": "auto", "messages": [{"role": "user", "content": "Say hello in French."}]}
    )
    # The keys themselves are not printed: terminals end up in logs and screenshots.
    keyed = bool(os.environ.get("GATEWAY_API_KEYS", "").strip())
    auth = ' -H "authorization: Bearer $API_KEY"' if keyed else ""
    api_key = 'os.environ["API_KEY"]' if keyed else '"unused"'
    lines = [
        f"\nhybrid gateway ready after {seconds:.0f} s: {url}",
        *rows,
        "\ncurl (the response headers name the tier, node and routing reason):",
        f"  curl -si {url}/v1/chat/completions -H 'content-type: application/json' \\",
        f"    -H 'x-session-id: demo'{auth} -d '{body}'",
        "\nopenai SDK (pip install openai):",
        "  import os" if keyed else None,
        "  from openai import OpenAI",
        f'  client = OpenAI(base_url="{url}/v1", api_key={api_key})',
        "  raw = client.chat.completions.with_raw_response.create(",
        '      model="auto",  # or "edge" / "cloud" to pin a tier',
        '      messages=[{"role": "user", "content": "Explain TCP slow start."}],',
        '      extra_headers={"x-session-id": "demo"})',
        '  print(raw.headers["x-gateway-tier"], raw.parse().choices[0].message.content)',
        "\n(GATEWAY_API_KEYS is set: export API_KEY=<one of its keys> first)" if keyed else None,
        "\nCtrl-C stops everything.",
    ]
    return "\n".join(line for line in lines if line is not None)


def _short(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    return str(path)


def _parse_args(argv: list[str] | None) -> StackConfig:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.stack",
        description="Run redis, an edge node, a cloud node (vLLM) and the gateway locally.",
    )
    parser.add_argument(
        "--ports",
        default="",
        metavar="NAME=PORT,...",
        help="gateway=8080,edge=8001,cloud=8002,redis=6379 by default; 0 = any free port",
    )
    parser.add_argument("--no-cloud", action="store_true", help="edge node only, no vLLM")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=DEFAULT_RUN_DIR,
        metavar="DIR",
        help="redis data, derived policy and (by default) logs (default .run)",
    )
    parser.add_argument(
        "--logs", type=Path, metavar="DIR", help="log directory (default RUN_DIR/logs)"
    )
    parser.add_argument("--policy", type=Path, default=DEFAULT_POLICY, help="routing policy YAML")
    parser.add_argument(
        "--cloud-profile", help="cloud_node profile (default: cpu or gpu-dev, per vLLM build)"
    )
    parser.add_argument(
        "--cloud-model", help="checkpoint dir or Hugging Face id for vLLM (default: SmolLM2)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_STARTUP_TIMEOUT_S,
        metavar="SECONDS",
        help=f"start-up deadline (default {DEFAULT_STARTUP_TIMEOUT_S:.0f})",
    )
    args = parser.parse_args(argv)
    try:
        ports = Ports.parse(args.ports)
    except ValueError as exc:
        parser.error(f"--ports: {exc}")
    if not args.policy.is_file():
        parser.error(f"--policy: {args.policy}: no such file")
    return StackConfig(
        ports=ports,
        cloud=not args.no_cloud,
        run_dir=args.run_dir.resolve(),
        logs_dir=args.logs,
        policy=args.policy.resolve(),
        redis_url=os.environ.get("REDIS_URL") or None,
        cloud_profile=args.cloud_profile,
        cloud_model=args.cloud_model,
        startup_timeout_s=args.timeout,
    )


if __name__ == "__main__":
    sys.exit(main())
