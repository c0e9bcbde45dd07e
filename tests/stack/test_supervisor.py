"""The stack's supervisor: backoff rules, and giving up on a service that keeps failing.

The give-up test runs a real edge-only stack (redis-server, the edge node, the gateway)
and makes restarts fail for real: a restart that is not ready in time, and ports held
by the test, where the restarted redis-server and gateway cannot listen.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from scripts.stack import Ports, StackConfig, start_stack
from scripts.stack.config import RestartPolicy
from scripts.stack.processes import Service, http_get
from scripts.stack.startup import Stack
from scripts.stack.supervisor import Supervisor
from tests.stack._procs import alive, wait_for


@pytest.mark.parametrize(
    ("failures", "delay_s", "gives_up"),
    [(1, 1, False), (2, 2, False), (3, 4, False), (4, 8, False), (5, 16, False), (6, 30, True)],
)
def test_default_restart_policy(failures: int, delay_s: float, gives_up: bool) -> None:
    policy = RestartPolicy()
    assert policy.delay_s(failures) == delay_s
    assert policy.gives_up(failures) is gives_up


@pytest.mark.parametrize(
    ("policy", "failures", "delay_s"),
    [
        (RestartPolicy(first_delay_s=0.5, max_delay_s=3), 1, 0.5),
        (RestartPolicy(first_delay_s=0.5, max_delay_s=3), 3, 2),
        (RestartPolicy(first_delay_s=0.5, max_delay_s=3), 4, 3),  # capped
        (RestartPolicy(first_delay_s=0.5, max_delay_s=3), 40, 3),
    ],
)
def test_restart_delay_doubles_up_to_the_cap(
    policy: RestartPolicy, failures: int, delay_s: float
) -> None:
    assert policy.delay_s(failures) == delay_s


def _service(stack: Stack, name: str) -> Service:
    return next(s for s in stack.services if s.name == name)


@contextmanager
def _held(port: int) -> Iterator[None]:
    """Listen on ``port`` so that a restarted server cannot."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # A killed server's leader is a zombie before its other threads have let go of
        # the port: wait until they have.
        wait_for(lambda: _bound(sock, port), 10, f"port {port} to be free")
        sock.listen()
        yield


def _bound(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def _kill(service: Service) -> None:
    os.kill(service.process.pid, signal.SIGKILL)
    wait_for(lambda: not alive(service.process.pid), 10, f"{service.name} to die")


@pytest.mark.edge_model
@pytest.mark.redis
@pytest.mark.timeout(120)
def test_a_service_that_keeps_failing_is_given_up(tmp_path: Path) -> None:
    config = StackConfig(
        ports=Ports(gateway=0, edge=0, redis=0),
        cloud=False,
        run_dir=tmp_path,
        restart=RestartPolicy(first_delay_s=0.1, max_quick_failures=2),
    )
    reports: list[str] = []
    with start_stack(config, progress=reports.append) as stack:
        supervisor = Supervisor(stack, report=reports.append, ready_timeout_s=0.3)

        def settles(name: str) -> bool:
            assert supervisor.poll() is None, reports
            return supervisor.state(name) == "given up"

        # The edge node: killed, then a restart that is not ready within 0.3 s.
        edge = _service(stack, "edge node")
        first_pid = edge.process.pid
        _kill(edge)
        wait_for(lambda: settles("edge node"), 30, "the stack to give up on the edge node")
        text = "\n".join(reports)
        assert f"edge node (pid {first_pid}) was killed by SIGKILL" in text
        assert "edge node is down; restarting it in 0.1 s" in text
        assert f"edge node (pid {edge.process.pid}) was not ready 0.3 s after its restart" in text
        assert "giving up on edge node: it failed 2 times in a row" in text
        assert edge.process.pid != first_pid and not alive(edge.process.pid)

        # Redis: its port is taken, so each restart exits at once. The rest keeps running.
        redis = _service(stack, "redis")
        _kill(redis)
        with _held(urlsplit(stack.redis_url).port or 0):
            wait_for(lambda: settles("redis"), 30, "the stack to give up on redis")
        assert "giving up on redis" in "\n".join(reports)
        assert supervisor.state("gateway") == "up"
        assert http_get(stack.gateway_url + "/healthz")[0] == 200

        # The gateway: nothing works without it, so giving up on it ends the stack.
        gateway = _service(stack, "gateway")
        _kill(gateway)
        ended: list[int] = []

        def stack_ends() -> bool:
            code = supervisor.poll()
            if code is not None:
                ended.append(code)
            return bool(ended)

        with _held(stack.ports.gateway):
            wait_for(stack_ends, 60, "the stack to give up on the gateway")
        assert ended == [1]
        assert "gateway failed 2 times in a row" in "\n".join(reports)
        assert "giving up: stopping the stack" in reports[-1]
    assert not any(alive(s.process.pid) for s in (edge, redis, gateway))
