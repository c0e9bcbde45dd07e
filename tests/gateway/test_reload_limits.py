"""Hostile policy files: each reload is a counted failure, /healthz stays fast, and the
watcher still adopts the next valid edit; at start-up the CLI names the file, no traceback."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from gateway.state import POLICIES
from tests.conftest import RunningGateway, policy_yaml
from tests.gateway.test_reload import _reloads
from tests.helpers import eventually, run_cli
from tests.scripted import unused_port

HEALTHZ_MAX_S = 0.05

# The classic: nine levels of ten aliases, 10**9 strings once expanded, 1.2 KB written.
BILLION_LAUGHS = f"lol1: &lol1 [{', '.join(['lol'] * 10)}]\n" + "".join(
    f"lol{n}: &lol{n} [{', '.join([f'*lol{n - 1}'] * 10)}]\n" for n in range(2, 10)
)
BILLION_LAUGHS += "# " + "padding to about 4 KB " * 130 + "\n"


def _replace_with_text(text: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        staged = path.with_suffix(".staged")
        staged.write_text(text)
        os.replace(staged, path)  # atomic: the watcher never sees a half-written file

    return write


def _replace_with_50_mb(path: Path) -> None:
    staged = path.with_suffix(".staged")
    # Written a megabyte at a time: building 50 MB as one string would hold the GIL for
    # tens of milliseconds in this process, which runs the gateway under test too.
    block = "  - 1\n" * ((1 << 20) // 6)
    with staged.open("w") as file:
        file.write("version: 1\nnodes:\n")
        for _ in range(50):
            file.write(block)
    os.replace(staged, path)


def _replace_with_dev_zero(path: Path) -> None:
    staged = path.with_suffix(".staged")
    staged.symlink_to("/dev/zero")
    os.replace(staged, path)


HOSTILE = {
    "billion-laughs": (
        _replace_with_text(BILLION_LAUGHS),
        r":\d+: <document>: over a limit: more than 20000 values once aliases are expanded",
    ),
    "50-mb": (_replace_with_50_mb, r": <document>: \d+ bytes, larger than the limit of 1048576"),
    "dev-zero": (
        _replace_with_dev_zero,
        r": <document>: not a regular file: a character device \(/dev/zero\)",
    ),
    "control-character": (
        _replace_with_text("version: 1\ntiers: {}\nnote: ring \x07 ring\n"),
        r":3: <document>: invalid YAML: control character U\+0007 at column 12",
    ),
    "recursive-alias": (
        _replace_with_text("version: 1\ntiers: &t {edge: *t}\n"),
        r":2: <document>: invalid YAML: an alias refers to its own anchor",
    ),
    "10000-brackets": (
        _replace_with_text("version: " + "[" * 10_000 + "]" * 10_000 + "\n"),
        r":1: <document>: over a limit: nested deeper than 64 levels",
    ),
    "nul-byte": (
        _replace_with_text("version: 1\ntiers:\n  edge: \x00\n"),
        r":3: <document>: invalid YAML: control character U\+0000 at column 9",
    ),
}


@contextlib.asynccontextmanager
async def healthz_probe(url: str) -> AsyncIterator[list[float]]:
    """Polls /healthz back to back while the block runs; yields the latencies so far.

    Its connection is opened (one request, not counted) before the block starts: the
    figures are the gateway's answers, not a TCP handshake and a cold client session."""
    latencies_s: list[float] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def probe(session: aiohttp.ClientSession) -> float:
        started = loop.time()
        async with session.get(url + "/healthz") as response:
            assert response.status == 200
            await response.read()
        return loop.time() - started

    async def run(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            latencies_s.append(await probe(session))
            await asyncio.sleep(0.002)

    async with aiohttp.ClientSession() as session:
        await probe(session)  # warm: the connection the loop below reuses
        task = asyncio.create_task(run(session))
        try:
            yield latencies_s
        finally:
            stop.set()
            await task


async def _readyz_policy_error(gateway: RunningGateway) -> str | None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gateway.url + "/readyz") as response,
    ):
        error: str | None = (await response.json())["policy_error"]
        return error


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_hostile_file_is_a_counted_failure_and_the_next_edit_is_adopted(
    case: str, upstreams, make_gateway, caplog
) -> None:
    replace, expected = HOSTILE[case]
    edge, cloud = await upstreams("edge-model"), await upstreams("cloud-model")
    nodes = ([(edge.url, "edge-model")], [(cloud.url, "cloud-model")])
    gateway = await make_gateway(policy_yaml(*nodes, cloud_above=0.9), health_checks=False)
    holder = gateway.app[POLICIES]
    running = holder.current
    path = gateway.policy_path

    # The objects the whole test session has piled up are moved out of the collector's
    # reach: the parse's allocations would otherwise trigger full collections over that
    # heap (0.4 s seen late in a full run), a pause a gateway process does not have.
    gc.collect()
    gc.freeze()
    try:
        async with healthz_probe(gateway.url) as latencies_s:
            await asyncio.to_thread(replace, path)  # the 50 MB write stays off the loop
            await eventually(lambda: holder.last_error is not None, timeout_s=5.0)
            await eventually(lambda: len(latencies_s) >= 5)
    finally:
        gc.unfreeze()

    message = holder.last_error
    assert message is not None and re.match(re.escape(str(path)) + expected, message)
    assert holder.current is running
    assert await _reloads(gateway) == {"failure": 1.0}
    assert await _readyz_policy_error(gateway) == message
    assert message in caplog.text and "keeping the running policy" in caplog.text
    assert max(latencies_s) < HEALTHZ_MAX_S, f"/healthz took {max(latencies_s):.3f} s"

    # The watcher is alive: a valid edit (a regular file again) is adopted.
    await asyncio.to_thread(_replace_with_text(policy_yaml(*nodes, cloud_above=0.0)), path)
    await eventually(lambda: holder.current.policy.routing.cloud_above == 0.0, timeout_s=5.0)
    assert holder.last_error is None
    assert await _reloads(gateway) == {"success": 1.0, "failure": 1.0}
    assert await _readyz_policy_error(gateway) is None


NUL_POLICY = "version: 1\ntiers:\n  edge: {context_window: 2048\x00}\n"
NUL_ERROR = "<document>: invalid YAML: control character U+0000 at column 30 is not allowed"


def test_check_policy_names_a_nul_byte_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "nul.yaml"
    bad.write_text(NUL_POLICY)
    result = run_cli("check-policy", str(bad))
    assert result.returncode == 1  # check-policy's status for a file that fails
    assert result.stderr == f"error: {bad}:3: {NUL_ERROR}\n"


def test_serve_names_a_nul_byte_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "nul.yaml"
    bad.write_text(NUL_POLICY)
    env = {"GATEWAY_POLICY": str(bad), "GATEWAY_PORT": str(unused_port())}
    result = run_cli("serve", env=env)
    assert result.returncode == 2  # serve's status for an invalid policy
    assert result.stderr == f"error: invalid policy: {bad}:3: {NUL_ERROR}\n"
