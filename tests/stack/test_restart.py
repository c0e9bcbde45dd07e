"""``make run``'s supervisor: the edge node is killed, the gateway fails over, the node comes back.

The stack runs as the command line does (``python -m scripts.stack``), with the real
redis-server, edge node and gateway; its cloud node is a scripted upstream given with
``--cloud-url`` (a real aiohttp server on loopback), so that the gateway has a second
tier to fail over to without vLLM's minutes of start-up.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from scripts.stack.processes import die_with_parent
from tests.helpers import eventually, sdk
from tests.scripted import ScriptedUpstream
from tests.stack._procs import alive
from tests.stack._tools import REPO_ROOT

pytestmark = [pytest.mark.edge_model, pytest.mark.redis]

READY_TIMEOUT_S = 90.0
BACK_TIMEOUT_S = 60.0


class StackCli:
    """``python -m scripts.stack`` in a session of its own; its output is read as it comes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: str) -> StackCli:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "scripts.stack", *args,
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
            preexec_fn=die_with_parent(),  # SIGTERM: the stack stops its services
        )  # fmt: skip
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.lines.append(line.decode(errors="replace"))

    @property
    def text(self) -> str:
        return "".join(self.lines)

    async def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """The first match of ``pattern`` in the output, waiting up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while (found := re.search(pattern, self.text, re.M)) is None:
            assert not self._reader.done(), f"the stack ended:\n{self.text}"
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.text}"
            await asyncio.sleep(0.05)
        return found

    async def reader_done(self) -> None:
        await asyncio.wait_for(self._reader, 10)

    async def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, as Ctrl-C would; kill the group if it does not end in time."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout_s)
        except TimeoutError:
            os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
            raise
        finally:
            await self.reader_done()
        return code


@pytest.mark.timeout(240)
async def test_a_killed_edge_node_is_restarted_while_the_gateway_fails_over(
    tmp_path: Path,
) -> None:
    cloud = await ScriptedUpstream(model="cloud-scripted").start()
    cli = await StackCli.start(
        "--cloud-url", f"{cloud.url}=cloud-scripted",
        "--ports", "gateway=0,edge=0,redis=0",
        "--run-dir", str(tmp_path),
    )  # fmt: skip
    try:
        await cli.wait_for(r"^Ctrl-C stops everything", READY_TIMEOUT_S)
        started = re.findall(r"\] (\w+): start\w* .*\(pid (\d+)\)", cli.text)
        pids = {name: int(pid) for name, pid in started}
        assert set(pids) == {"redis", "edge", "gateway"}, cli.text  # no vLLM started
        gateway_url = (await cli.wait_for(r"^  gateway  (http://\S+)$", 1))[1]
        assert f"cloud    {cloud.url}  model cloud-scripted (not started by the stack)" in cli.text

        client = sdk(gateway_url)
        async with client:

            async def ask_edge() -> tuple[str, str | None]:
                raw = await client.chat.completions.with_raw_response.create(
                    model="edge",  # a tier pin: the gateway may still fail over
                    messages=[{"role": "user", "content": "Name a colour."}],
                    max_tokens=8,
                )
                return raw.headers["x-gateway-tier"], raw.headers.get("x-gateway-fallback")

            assert (await ask_edge())[0] == "edge"
            edge_log = tmp_path / "logs" / "edge.log"
            before = edge_log.read_text()

            os.kill(pids["edge"], signal.SIGKILL)
            await eventually(lambda: not alive(pids["edge"]), 10, "the edge node to die")
            # Meanwhile (the restart waits at least 1 s, then the model loads), the request
            # that the edge cannot take is answered by the cloud, and the header says why.
            tier, fallback = await ask_edge()
            assert tier == "cloud", fallback
            assert fallback is not None and "edge-1:" in fallback
            assert cloud.calls == 1

            await cli.wait_for(r"^\[stack .*\] edge node is back", BACK_TIMEOUT_S)
            text = cli.text
            # The death is reported with the end of the dead process's log.
            assert f"stack: edge node (pid {pids['edge']}) was killed by SIGKILL" in text
            assert f"the end of {edge_log}:\n    " in text
            assert "edge node is down; restarting it in 1 s" in text
            new_pid = int((await cli.wait_for(r"edge node: restarted \(pid (\d+)", 1))[1])
            assert new_pid != pids["edge"] and alive(new_pid)
            # The others kept running: the same redis and gateway processes.
            assert alive(pids["redis"]) and alive(pids["gateway"])

            # Serving again: once the gateway sees the node healthy, the edge answers.
            answers: list[str] = []

            async def edge_answers() -> bool:
                answers.append((await ask_edge())[0])
                return answers[-1] == "edge"

            deadline = time.monotonic() + BACK_TIMEOUT_S
            while not await edge_answers():
                assert time.monotonic() < deadline, answers
                await asyncio.sleep(0.5)

        # The crash's log survives the restart: appended to, one separator per start.
        after = edge_log.read_text()
        assert after.startswith(before)
        starts = re.findall(r"^===== .* edge node started \(pid (\d+)\) =====$", after, re.M)
        assert [int(pid) for pid in starts] == [pids["edge"], new_pid]

        assert await cli.stop() == 0
        assert not any(alive(pid) for pid in [*pids.values(), new_pid])
    finally:
        if cli.process.returncode is None:
            os.killpg(cli.process.pid, signal.SIGKILL)
            await cli.process.wait()
        await cli.reader_done()
        await cloud.close()
