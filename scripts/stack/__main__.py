"""``python -m scripts.stack``: start the stack, print how to use it, stop it on a signal."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from scripts.stack.banner import banner
from scripts.stack.config import (
    DEFAULT_POLICY,
    DEFAULT_RUN_DIR,
    DEFAULT_STARTUP_TIMEOUT_S,
    Ports,
    StackCancelled,
    StackConfig,
    StackError,
)
from scripts.stack.parent import ParentWatch
from scripts.stack.startup import Progress, start_stack
from scripts.stack.supervisor import Supervisor


class _StopRequest:
    """Set by SIGINT/SIGTERM (or the parent stopping) and polled by the loops: no exception
    lands mid-step, so a signal can never skip the stop, whatever line it interrupts."""

    def __init__(self, parent: ParentWatch | None = None) -> None:
        self.reason: str | None = None
        self._parent = parent

    def handle(self, signum: int, frame: object) -> None:
        self.reason = f"{signal.Signals(signum).name} received"

    def is_set(self) -> bool:
        if self.reason is None and self._parent is not None:
            self.reason = self._parent.stopping()
        return self.reason is not None


def main(argv: list[str] | None = None) -> int:
    config, stop_with_parent = _parse_args(argv)
    stop = _StopRequest(ParentWatch() if stop_with_parent else None)
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
        code = _supervise(Supervisor(stack, report=_report), say, stop)
    say("stopped everything the stack had started")
    return code


def _supervise(supervisor: Supervisor, say: Progress, stop: _StopRequest) -> int:
    """Restart what dies until a signal (status 0) or until the gateway is given up (1)."""
    while not stop.is_set():
        code = supervisor.poll()
        if code is not None:
            return code
        time.sleep(0.2)
    say(f"{stop.reason}: stopping")
    return 0


def _report(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _parse_args(argv: list[str] | None) -> tuple[StackConfig, bool]:
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
        "--cloud-url",
        metavar="URL=MODEL",
        help="use this running OpenAI-compatible server as the cloud node instead of starting vLLM",
    )
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
    parser.add_argument(
        "--stop-with-parent",
        action="store_true",
        help="also stop when the parent exits or handles SIGINT, SIGTERM, SIGHUP or SIGQUIT "
        "(make run)",
    )
    args = parser.parse_args(argv)
    try:
        ports = Ports.parse(args.ports)
    except ValueError as exc:
        parser.error(f"--ports: {exc}")
    external_cloud = None
    if args.cloud_url is not None:
        if args.no_cloud:
            parser.error("--cloud-url and --no-cloud exclude each other")
        external_cloud = _cloud_url(args.cloud_url, parser)
    if not args.policy.is_file():
        parser.error(f"--policy: {args.policy}: no such file")
    config = StackConfig(
        ports=ports,
        cloud=not args.no_cloud,
        run_dir=args.run_dir.resolve(),
        logs_dir=args.logs,
        policy=args.policy.resolve(),
        redis_url=os.environ.get("REDIS_URL") or None,
        cloud_profile=args.cloud_profile,
        cloud_model=args.cloud_model,
        external_cloud=external_cloud,
        startup_timeout_s=args.timeout,
    )
    return config, args.stop_with_parent


def _cloud_url(text: str, parser: argparse.ArgumentParser) -> tuple[str, str]:
    url, sep, model = text.partition("=")
    url, model = url.strip().rstrip("/"), model.strip()
    if not sep or not model or not url.startswith(("http://", "https://")):
        parser.error(f"--cloud-url: {text!r}: expected URL=MODEL, e.g. http://10.0.0.5:8000=qwen")
    return url, model


if __name__ == "__main__":
    sys.exit(main())
