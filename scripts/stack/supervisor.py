"""Keep the stack's services running: report a process that died, restart it with backoff.

Rules (the numbers are :class:`~scripts.stack.config.RestartPolicy`'s):

- A service whose process exits by itself is reported at once, with the end of its log,
  and the other services keep running: the gateway fails over to the other tier while a
  node is down, and goes on without sessions while Redis is.
- The service is started again with the same argv, environment and port, after a delay
  that doubles with each quick failure in a row (1, 2, 4, 8, 16 s; capped at 30 s when
  more failures are allowed); its log is appended to. It counts as back once its ready
  check answers again (a node's ``/health``, Redis's PING, the gateway's ``/healthz``),
  and the stack says so.
- A restart that is not ready within the start-up deadline is stopped and counts as a
  failure. After ``max_quick_failures`` quick failures in a row the stack gives up on
  the service and says so; giving up on the gateway ends the stack (status 1), since
  nothing else can be reached without it.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from scripts.stack.processes import Service
from scripts.stack.startup import Stack

State = Literal["up", "starting", "waiting", "given up"]


@dataclass(slots=True, kw_only=True)
class _Watch:
    service: Service
    state: State
    ready_at: float | None
    """When the current run became ready; None while it has not."""
    down_since: float = 0.0
    restart_at: float = 0.0
    quick_failures: int = 0


class Supervisor:
    """Call :meth:`poll` every fraction of a second from the thread that started the stack."""

    def __init__(
        self,
        stack: Stack,
        *,
        report: Callable[[str], None],
        ready_timeout_s: float | None = None,
    ) -> None:
        """``ready_timeout_s``: how long a restart may take to be ready (default: the
        stack's start-up deadline)."""
        self._stack = stack
        self._policy = stack.config.restart
        self._ready_timeout_s = (
            stack.config.startup_timeout_s if ready_timeout_s is None else ready_timeout_s
        )
        self._say = stack.progress
        self._report = report
        now = time.monotonic()
        # start_stack returns once every service is ready.
        self._watches = [_Watch(service=s, state="up", ready_at=now) for s in stack.services]

    def state(self, name: str) -> State:
        return next(w.state for w in self._watches if w.service.name == name)

    def poll(self) -> int | None:
        """One look at every service; an exit status when the stack has to end."""
        for watch in self._watches:
            now = time.monotonic()
            service = watch.service
            if watch.state in ("up", "starting"):
                code = service.exited()
                ended = None
                if code is not None:
                    ran_s = now - service.started_at
                    ended = self._failed(watch, now, f"{_how_it_ended(code)} after {ran_s:.0f} s")
                elif watch.state == "starting":
                    ended = self._check_restart(watch, now)
                if ended is not None:
                    return ended
            elif watch.state == "waiting" and now >= watch.restart_at:
                service.restart()
                watch.state, watch.ready_at = "starting", None
                self._say(
                    f"{service.name}: restarted (pid {service.process.pid}, "
                    f"restart {service.restarts}); waiting until it is ready"
                )
        return None

    def _check_restart(self, watch: _Watch, now: float) -> int | None:
        service = watch.service
        if service.ready is None or service.ready():
            watch.state, watch.ready_at = "up", now
            self._say(
                f"{service.name} is back: ready again {now - watch.down_since:.0f} s after "
                f"it went down (pid {service.process.pid}, restart {service.restarts})"
            )
        elif now - service.started_at > self._ready_timeout_s:
            timeout_s = self._ready_timeout_s
            return self._failed(watch, now, f"was not ready {timeout_s:g} s after its restart")
        return None

    def _failed(self, watch: _Watch, now: float, how: str) -> int | None:
        service = watch.service
        pid = service.process.pid
        quick = watch.ready_at is None or now - watch.ready_at < self._policy.stable_after_s
        watch.quick_failures = watch.quick_failures + 1 if quick else 1
        watch.down_since = now
        # What is left of its process group goes too (vLLM's engine core), and its watchdog.
        service.stop()
        self._report(
            f"stack: {service.name} (pid {pid}) {how}; "
            f"the end of {service.log_path}:\n{service.tail(20)}"
        )
        failures = watch.quick_failures
        if self._policy.gives_up(failures):
            watch.state = "given up"
            unstable = f"without staying up for {self._policy.stable_after_s:g} s"
            if service.vital:
                self._report(
                    f"stack: error: {service.name} failed {failures} times in a row {unstable}; "
                    "giving up: stopping the stack"
                )
                return 1
            self._report(
                f"stack: giving up on {service.name}: it failed {failures} times in a row "
                f"{unstable}; the other services keep running (Ctrl-C stops them)"
            )
            return None
        delay_s = self._policy.delay_s(failures)
        watch.state, watch.restart_at = "waiting", now + delay_s
        streak = (
            f" ({failures} quick failures in a row; the stack gives up after "
            f"{self._policy.max_quick_failures})"
            if failures > 1
            else ""
        )
        self._say(f"{service.name} is down; restarting it in {delay_s:g} s{streak}")
        return None


def _how_it_ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
