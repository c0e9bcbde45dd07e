"""Helpers the benchmark scripts share: free loopback ports and waiting for a server."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_ready(url: str, timeout_s: float = 60, poll_s: float = 0.1) -> None:
    """Poll ``url`` until it answers 200; RuntimeError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready after {timeout_s} s")
            await asyncio.sleep(poll_s)
