"""The running stack, and its start-up: spawn every service, then wait until all are ready."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType

from scripts.stack import services
from scripts.stack.config import REPO_ROOT, StackCancelled, StackConfig, StackError
from scripts.stack.processes import (
    HOST,
    Service,
    answers_200,
    http_get,
    last_log_line,
    signals_held,
    spawn,
)

Progress = Callable[[str], None]


class Stack:
    """The running stack; ``stop()`` (or leaving the ``with`` block) stops what it started."""

    def __init__(
        self, config: StackConfig, progress: Progress, cancelled: Callable[[], bool]
    ) -> None:
        self.config = config
        self.ports = config.ports
        self.services: list[Service] = []
        self.progress = progress
        self.redis_url = ""
        self.redis_started = False
        self.edge_model = ""
        self.cloud_model = ""
        self.cloud_build = ""
        self._cancelled = cancelled

    @property
    def gateway_url(self) -> str:
        return f"http://{HOST}:{self.ports.gateway}"

    @property
    def edge_url(self) -> str:
        return f"http://{HOST}:{self.ports.edge}"

    @property
    def cloud_url(self) -> str | None:
        if self.config.external_cloud is not None:
            return self.config.external_cloud[0]
        return f"http://{HOST}:{self.ports.cloud}" if self.config.cloud else None

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_name: str,
        env: Mapping[str, str] | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> Service:
        """Start a service logging to ``<logs>/<log_name>.log``; ``stop()`` will stop it.

        ``ready`` says whether it answers: the supervisor waits for it after a restart.
        """
        log_path = self.config.logs / f"{log_name}.log"
        service = spawn(name, argv, log_path=log_path, cwd=REPO_ROOT, env=env or {})
        service.ready = ready
        self.services.append(service)
        return service

    def raise_if_cancelled(self) -> None:
        if self._cancelled():
            raise StackCancelled("start-up interrupted")

    def stop(self) -> None:
        """Stop every started process, newest first; idempotent."""
        with signals_held():
            while self.services:
                service = self.services.pop()
                if service.exited() is None:
                    self.progress(f"stopping {service.name} (pid {service.process.pid})")
                service.stop()


def start_stack(
    config: StackConfig | None = None,
    *,
    progress: Progress = print,
    cancelled: Callable[[], bool] | None = None,
) -> Stack:
    """Start everything and wait until the gateway is ready; stops what it started on failure.

    ``cancelled`` is polled while waiting: when it returns True the start-up is abandoned
    and :class:`StackCancelled` raised (the command line's signal handlers set it).
    """
    config = config or StackConfig()
    config = replace(config, ports=config.ports.resolved())
    stack = Stack(config, progress, cancelled or (lambda: False))
    started = time.monotonic()
    try:
        services.check_ports_free(config)
        config.run_dir.mkdir(parents=True, exist_ok=True)
        config.logs.mkdir(parents=True, exist_ok=True)
        services.start_redis(stack)
        # The edge node loads while the cloud checkpoint is prepared and vLLM starts.
        waits = [
            _Wait(
                service=services.start_edge(stack),
                what="the edge node (llama.cpp) to load the model",
                check=answers_200(stack.edge_url + "/health"),
            )
        ]
        if config.external_cloud is not None:
            stack.cloud_model, stack.cloud_build = config.external_cloud[1], "external"
        elif config.cloud:
            waits.append(
                _Wait(
                    service=services.start_cloud(stack),
                    what="vLLM (cloud) to load the model",
                    check=answers_200(f"{stack.cloud_url}/health"),
                )
            )
        waits.append(
            _Wait(
                service=services.start_gateway(stack),
                what="the gateway to see healthy nodes",
                check=gateway_ready(stack.gateway_url),
                is_node=False,
            )
        )
        _wait_all(stack, waits, started)
    except BaseException:
        # Ctrl-C, a cancel or a failure half-way: nothing may outlive the attempt.
        stack.stop()
        raise
    return stack


def gateway_ready(url: str) -> Callable[[], bool]:
    """A check: ``/readyz`` says ready and every node it lists is healthy."""

    def check() -> bool:
        status, body = http_get(url + "/readyz")
        if status != 200 or body is None:
            return False
        tiers = json.loads(body).get("tiers", {})
        nodes = [node for tier_nodes in tiers.values() for node in tier_nodes]
        return bool(nodes) and all(node.get("healthy") is True for node in nodes)

    return check


@dataclass(slots=True, kw_only=True)
class _Wait:
    service: Service
    what: str
    check: Callable[[], bool]
    is_node: bool = True
    done: bool = False
    last_note: str = ""


def _wait_all(stack: Stack, waits: list[_Wait], started: float) -> None:
    """Poll until every wait is ready; a process that exits, or the deadline, is an error."""
    config = stack.config
    deadline = started + config.startup_timeout_s
    last_note = time.monotonic()
    while not all(wait.done for wait in waits):
        stack.raise_if_cancelled()
        now = time.monotonic()
        for wait in (w for w in waits if not w.done):
            code = wait.service.exited()
            if code is not None:
                raise StackError(
                    f"{wait.service.name} exited with status {code} during start-up; "
                    f"log {wait.service.log_path}:\n{wait.service.tail()}"
                )
            if wait.check():
                wait.done = True
                stack.progress(f"{wait.service.name} ready after {now - started:.0f} s")
        pending = [w for w in waits if not w.done]
        if pending and now > deadline:
            raise StackError(
                f"not ready within {config.startup_timeout_s:.0f} s (--timeout raises it): "
                + "; ".join(f"{w.service.name} (log {w.service.log_path})" for w in pending)
                + f"\n{pending[0].service.tail()}"
            )
        if pending and now - last_note >= config.progress_every_s:
            last_note = now
            # The gateway waits on the nodes: name it only once they are up.
            for wait in [w for w in pending if w.is_node] or pending:
                # The newest log line shows what is happening, but only when it is new.
                note = last_log_line(wait.service.log_path)
                suffix = f"  [{note}]" if note and note != wait.last_note else ""
                wait.last_note = note
                stack.progress(f"waiting for {wait.what}… {now - started:.0f} s{suffix}")
        time.sleep(0.5)
