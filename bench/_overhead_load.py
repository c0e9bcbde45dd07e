"""The load side of ``bench/overhead.py``: one measurement of one target, and its server's CPU.

A measurement sends ``requests`` chat requests from ``concurrency`` workers on fresh
keep-alive connections and reads the server's CPU time (every thread, from
``/proc/PID/task/*/schedstat``, nanoseconds) just before and just after, so the CPU it
reports is exactly the window of that load.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from _overhead_upstream import ANSWER

PROMPT = "Explain in two sentences why the sky is blue, for a ten-year-old."


@dataclass(frozen=True, slots=True)
class Cell:
    stream: bool
    concurrency: int

    @property
    def label(self) -> str:
        return f"{'stream' if self.stream else 'non-stream'} c{self.concurrency}"


@dataclass(frozen=True, slots=True)
class Sample:
    latencies_s: list[float]
    """Whole answer, request sent to last byte read."""
    first_chunk_s: list[float]
    """Streams: request sent to the first body bytes."""
    wall_s: float
    cpu_s: float | None
    """The server's CPU time over the window; None for the upstream called directly."""

    @property
    def requests(self) -> int:
        return len(self.latencies_s)

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s

    @property
    def cpu_ms_per_request(self) -> float | None:
        return None if self.cpu_s is None else self.cpu_s * 1000 / self.requests


def cpu_seconds(pid: int) -> float:
    """CPU time of every live thread of ``pid`` (schedstat: ns, not 10 ms clock ticks)."""
    total_ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total_ns += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended between the listing and the read
    return total_ns / 1e9


def request_body(cell: Cell) -> bytes:
    body: dict[str, object] = {
        "model": "auto",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": cell.stream,
    }
    if cell.stream:
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


async def measure(
    url: str,
    cell: Cell,
    pid: int | None,
    *,
    requests: int,
    session_prefix: str | None,
    authorization: str | None = None,
) -> Sample:
    """``requests`` requests to ``url`` at ``cell``; with ``session_prefix`` each worker holds
    four-turn conversations (``x-session-id``), so a request carries 0 to 3 earlier turns."""
    body = request_body(cell)
    endpoint = url + "/v1/chat/completions"
    latencies: list[float] = []
    first_chunks: list[float] = []
    remaining = requests
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=cell.concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:

        async def worker(index: int) -> None:
            nonlocal remaining
            sent = 0
            while remaining > 0:
                remaining -= 1
                headers = {"Content-Type": "application/json"}
                if authorization is not None:
                    headers["Authorization"] = authorization
                if session_prefix is not None:
                    headers["x-session-id"] = f"{session_prefix}-w{index}-c{sent // 4}"
                sent += 1
                start = time.perf_counter()
                async with client.post(endpoint, data=body, headers=headers) as response:
                    if response.status != 200:
                        text = await response.text()
                        raise RuntimeError(f"{response.status} from {url}: {text[:300]}")
                    if cell.stream:
                        await response.content.readany()
                        first_chunks.append(time.perf_counter() - start)
                        while await response.content.readany():
                            pass
                    else:
                        await response.read()
                latencies.append(time.perf_counter() - start)

        cpu_before = cpu_seconds(pid) if pid is not None else None
        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(cell.concurrency)))
        wall = time.perf_counter() - started
        cpu_after = cpu_seconds(pid) if pid is not None else None
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return Sample(latencies, first_chunks, wall, cpu)


async def verify(url: str, cell: Cell, *, authorization: str | None = None) -> None:
    """One request: the answer through ``url`` is the upstream's (a broken path fails loudly
    instead of being measured)."""
    headers = {"Authorization": authorization} if authorization else {}
    async with (
        aiohttp.ClientSession() as client,
        client.post(
            url + "/v1/chat/completions", data=request_body(cell), headers=headers
        ) as response,
    ):
        raw = await response.read()
    if response.status != 200:
        raise RuntimeError(f"{response.status} from {url}: {raw[:300]!r}")
    if not cell.stream:
        text = json.loads(raw)["choices"][0]["message"]["content"]
    else:
        events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
        if events[-1] != "[DONE]":
            raise RuntimeError(f"stream from {url} does not end with [DONE]")
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        if not any(c.get("usage") for c in chunks):
            raise RuntimeError(f"stream from {url} carries no usage")
    if text != ANSWER:
        raise RuntimeError(f"{url} answered {text!r}, expected the upstream's {ANSWER!r}")
