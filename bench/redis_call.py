"""CPU per admission call: redis-py's script call against :class:`RedisPipe`, same run.

The call is the limiter's own: ``admit.lua`` by EVALSHA with the keys and arguments of a
key that has a requests and a tokens limit and a budget (limits far above the load).
redis-py is set up as the gateway sets it up (``gateway.redis_client``: a bounded pool,
no retries, every call under a timeout; hiredis parsing). Each round measures both
clients at each concurrency (``--concurrency`` callers, each awaiting its calls one after
another), in alternating order (forward in even rounds, backward in odd ones), after a
warm-up. The figure is this process's CPU time (``time.process_time``: the client's work,
not Redis's, and not skewed by other work on the machine) per call; printed per cell as
the median over rounds (min-max), with the pipe's saving.

    .venv/bin/python bench/redis_call.py [--rounds 7] [--calls 20000] [--url redis://...]

Without ``--url`` a redis-server is started on a free loopback port (and stopped).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # PYTHONPATH, if set, goes first

from gateway.accounts.layout import budget_key, rate_prefix
from gateway.accounts.limiter import lua_script
from gateway.accounts.redis_pipe import RedisPipe, script_sha
from gateway.accounts.service import MAX_CONNECTIONS, REDIS_TIMEOUT_S
from gateway.redis_client import close_client, redis_client

Call = Callable[[], Awaitable[object]]
KEY_ID = "key_bench"
KEYS = [rate_prefix(KEY_ID), budget_key(KEY_ID, "d20000")]
ARGS = [10**9, 10**12, 50, 10**18, 1000, 2**31]
"""rpm, tpm, prompt tokens, budget limit (nUSD), estimate (nUSD), expiry: never refused."""


async def cpu_per_call_us(call: Call, *, calls: int, concurrency: int) -> tuple[float, float]:
    """This process's CPU µs per call and the calls per second, ``concurrency`` callers."""
    each = calls // concurrency

    async def caller() -> None:
        for _ in range(each):
            await call()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = each * concurrency
    return cpu / done * 1e6, done / wall


async def bench(url: str, *, rounds: int, calls: int, concurrency: list[int]) -> None:
    text = lua_script("admit.lua")
    sha = script_sha(text)
    client = redis_client(url, max_connections=MAX_CONNECTIONS, timeout_s=REDIS_TIMEOUT_S)
    pipe = RedisPipe.from_url(url, timeout_s=REDIS_TIMEOUT_S)
    script = client.register_script(text)

    async def redis_py() -> object:
        return await script(keys=KEYS, args=ARGS)

    async def piped() -> object:
        return await pipe.evalsha(sha, text, KEYS, ARGS)

    clients: list[tuple[str, Call]] = [("redis-py", redis_py), ("pipe", piped)]
    cells = [(name, c) for c in concurrency for name, _ in clients]
    cpu: dict[tuple[str, int], list[float]] = {cell: [] for cell in cells}
    rate: dict[tuple[str, int], list[float]] = {cell: [] for cell in cells}
    try:
        for _, call in clients:  # warm-up: connections open, script loaded, code paths hot
            for c in concurrency:
                await cpu_per_call_us(call, calls=max(c, calls // 10), concurrency=c)
        for round_no in range(rounds):
            order = cells if round_no % 2 == 0 else cells[::-1]
            for name, c in order:
                call = dict(clients)[name]
                us, per_s = await cpu_per_call_us(call, calls=calls, concurrency=c)
                cpu[name, c].append(us)
                rate[name, c].append(per_s)
    finally:
        await pipe.aclose()
        await close_client(client)
    print(f"# {shlex.join([sys.executable, *sys.argv])}")
    print(f"# {rounds} rounds x {calls} calls per cell; admit.lua by EVALSHA; CPU of this process")
    print(f"{'client':<10} {'conc':>4} {'CPU us/call':>12} {'(min-max)':>15} {'calls/s':>9}")
    for c in concurrency:
        for name, _ in clients:
            values = cpu[name, c]
            print(
                f"{name:<10} {c:>4} {statistics.median(values):>12.1f} "
                f"{f'({min(values):.1f}-{max(values):.1f})':>15} "
                f"{statistics.median(rate[name, c]):>9.0f}"
            )
        saved = statistics.median(cpu["redis-py", c]) - statistics.median(cpu["pipe", c])
        print(f"{'saved':<10} {c:>4} {saved:>12.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--url", help="a running Redis (default: start a redis-server)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        from tests.fixtures.redis import RedisServer, free_port

        workdir = Path(tempfile.mkdtemp(prefix="redis-call-"))
        server = RedisServer(binary="redis-server", port=free_port(), workdir=workdir)
        server.start()
        url = server.url
    try:
        asyncio.run(bench(url, rounds=args.rounds, calls=args.calls, concurrency=args.concurrency))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
