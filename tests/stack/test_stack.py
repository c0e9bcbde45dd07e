"""scripts.stack without vLLM: options, port errors, the edge-only stack, the banner, and the
CLI's signals.

Real processes throughout: redis-server, the edge node with the SmolLM2 GGUF, the gateway;
every stack runs on free ports under the test's temporary directory.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.stack import (
    Ports,
    StackCancelled,
    StackConfig,
    StackError,
    free_port,
    redis_answers,
    start_stack,
)
from scripts.stack.banner import banner
from scripts.stack.processes import die_with_parent
from scripts.stack.startup import Stack
from tests.helpers import sync_sdk
from tests.stack._procs import alive, wait_for
from tests.stack._tools import REPO_ROOT

FREE = Ports(gateway=0, edge=0, cloud=0, redis=0)
CLI_READY_TIMEOUT_S = 90.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Ports()),
        ("gateway=9080", Ports(gateway=9080)),
        (" edge=9001 , cloud=0 ", Ports(edge=9001, cloud=0)),
        ("redis=6380,gateway=1", Ports(redis=6380, gateway=1)),
    ],
)
def test_ports_parse(text: str, expected: Ports) -> None:
    assert Ports.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gateway", "expected NAME=PORT"),
        ("web=80", "expected NAME=PORT"),
        ("edge=x", "'x' is not a port number"),
        ("cloud=70000", "between 0 and 65535"),
    ],
)
def test_ports_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Ports.parse(text)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_in_use_is_named_before_anything_starts(busy_port: int, tmp_path: Path) -> None:
    config = StackConfig(
        ports=Ports(gateway=0, edge=busy_port, redis=0), cloud=False, run_dir=tmp_path
    )
    with pytest.raises(StackError, match=rf"port {busy_port} \(edge\) already in use"):
        start_stack(config, progress=lambda line: None)
    # It failed before starting redis or writing logs.
    assert not (tmp_path / "logs").exists()


def test_the_cloud_port_is_free_to_use_without_a_cloud(busy_port: int, tmp_path: Path) -> None:
    """--no-cloud does not need port 8002: only a start with a cloud checks it."""
    config = StackConfig(ports=Ports(gateway=0, edge=0, cloud=busy_port, redis=0), run_dir=tmp_path)
    with pytest.raises(StackError, match=rf"port {busy_port} \(cloud\)"):
        start_stack(config, progress=lambda line: None)


@pytest.mark.edge_model
@pytest.mark.redis
@pytest.mark.timeout(60)
def test_cancelled_start_up_stops_what_had_started(tmp_path: Path) -> None:
    """Ctrl-C while the nodes load: the CLI's handler sets the flag start_stack polls."""
    lines: list[str] = []
    config = StackConfig(ports=FREE, cloud=False, run_dir=tmp_path)
    started = lambda: any(line.startswith("gateway: starting") for line in lines)  # noqa: E731
    with pytest.raises(StackCancelled):
        start_stack(config, progress=lines.append, cancelled=started)
    started_pids = {int(p) for line in lines for p in re.findall(r": start.*\(pid (\d+)\)", line)}
    stopped_pids = {
        int(p) for line in lines for p in re.findall(r"^stopping .*\(pid (\d+)\)", line)
    }
    assert len(started_pids) == 3, lines  # redis, edge node, gateway
    assert stopped_pids == started_pids
    pids = started_pids
    assert not any(alive(pid) for pid in pids)


@pytest.mark.edge_model
@pytest.mark.redis
@pytest.mark.timeout(180)
def test_edge_only_stack_serves_and_stops_everything(tmp_path: Path) -> None:
    # A redis that is already running is used, and left running afterwards.
    redis_port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
        preexec_fn=die_with_parent(signal.SIGKILL),  # gone with this process, whatever happens
    )
    try:
        wait_for(lambda: redis_answers(f"redis://127.0.0.1:{redis_port}/0"), 15)
        lines: list[str] = []
        config = StackConfig(
            ports=FREE, cloud=False, run_dir=tmp_path, redis_url=f"redis://127.0.0.1:{redis_port}/0"
        )
        with start_stack(config, progress=lines.append) as stack:
            pids = [service.process.pid for service in stack.services]
            assert [s.name for s in stack.services] == ["edge node", "gateway"]
            assert not stack.redis_started and stack.cloud_url is None
            assert any("already running" in line for line in lines)
            with sync_sdk(stack.gateway_url) as client:
                raw = client.chat.completions.with_raw_response.create(
                    model="auto",
                    messages=[{"role": "user", "content": "Name a colour."}],
                    max_tokens=8,
                )
            assert raw.headers["x-gateway-tier"] == "edge"
            assert raw.parse().model == "smollm2-135m-instruct"
            assert (tmp_path / "logs" / "edge.log").stat().st_size > 0
            assert (tmp_path / "logs" / "gateway.log").stat().st_size > 0
            # --no-cloud writes a policy with no cloud nodes rather than one that points at
            # a port where nothing listens.
            edge_only = (tmp_path / "policy-edge-only.yaml").read_text()
            assert re.search(r"cloud:\n(.*\n)*?\s+nodes: \[\]", edge_only)
        assert not any(alive(pid) for pid in pids)
        stack.stop()  # idempotent
        assert redis_answers(f"redis://127.0.0.1:{redis_port}/0")
    finally:
        redis.terminate()
        redis.wait(timeout=10)


@pytest.mark.edge_model
@pytest.mark.redis
@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_cli_stops_everything_on_a_signal(how: str, tmp_path: Path) -> None:
    """(A process that dies by itself is restarted instead: test_restart.py.)"""
    argv = [sys.executable, "-m", "scripts.stack", "--no-cloud"]
    argv += ["--ports", "gateway=0,edge=0,redis=0", "--run-dir", str(tmp_path)]
    cli = subprocess.Popen(
        argv,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
        preexec_fn=die_with_parent(),  # SIGTERM: the stack stops its services, as on Ctrl-C
    )
    output: list[str] = []
    try:
        assert cli.stdout is not None
        deadline = time.monotonic() + CLI_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            line = cli.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.startswith("Ctrl-C stops everything"):
                break
        text = "".join(output)
        assert "hybrid gateway ready after" in text, text
        assert re.search(r"curl -si http://127\.0\.0\.1:\d+/v1/chat/completions", text)
        assert "from openai import OpenAI" in text
        pids = {
            name: int(pid) for name, pid in re.findall(r"\] (\w+): start\w* .*\(pid (\d+)\)", text)
        }
        assert set(pids) == {"redis", "edge", "gateway"}, text

        cli.send_signal(getattr(signal, how))
        rest, _ = cli.communicate(timeout=60)
        assert cli.returncode == 0, rest
        assert f"{how} received: stopping" in rest
        assert "stopped everything the stack had started" in rest
        assert not any(alive(pid) for pid in pids.values())
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait(timeout=10)
        if cli.stdout is not None:
            cli.stdout.close()


def test_the_banner_examples_use_sessions_of_their_own(tmp_path: Path) -> None:
    """The curl and SDK examples do not share a session, and a new start uses new ones."""
    config = StackConfig(cloud=False, run_dir=tmp_path)
    stack = Stack(config, progress=lambda line: None, cancelled=lambda: False)  # starts nothing
    sessions = [
        re.findall(r"x-session-id['\"]?: ['\"]?(demo-[\w-]+)", banner(stack, 1.0)) for _ in range(2)
    ]
    for curl, sdk in sessions:
        assert curl.startswith("demo-curl-") and sdk.startswith("demo-sdk-")
    assert len({name for pair in sessions for name in pair}) == 4, sessions


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cloud-url", "http://127.0.0.1:9"], "expected URL=MODEL"),
        (["--cloud-url", "127.0.0.1:9=m"], "expected URL=MODEL"),
        (["--cloud-url", "http://127.0.0.1:9=m", "--no-cloud"], "exclude each other"),
    ],
)
def test_cloud_url_is_checked(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from scripts.stack.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
