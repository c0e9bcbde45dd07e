"""LoopTimeout keeps asyncio.timeout_at's rules: each case runs on both, the same way."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from gateway.upstream.loop_timeout import LoopTimeout

Timeout = Callable[[asyncio.AbstractEventLoop, float], AbstractAsyncContextManager[object]]


def _asyncio_timeout_at(loop: asyncio.AbstractEventLoop, when: float) -> asyncio.Timeout:
    return asyncio.timeout_at(when)


TIMEOUTS = pytest.mark.parametrize(
    "timeout_at", [LoopTimeout, _asyncio_timeout_at], ids=["LoopTimeout", "asyncio.timeout_at"]
)


@TIMEOUTS
async def test_a_block_still_running_at_the_deadline_raises_timeout_error(
    timeout_at: Timeout,
) -> None:
    loop = asyncio.get_running_loop()
    reached = []
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with timeout_at(loop, started + 0.05):
            await asyncio.sleep(10)
            reached.append("after the sleep")
    assert reached == []
    assert 0.04 <= loop.time() - started < 5


@TIMEOUTS
async def test_a_block_done_in_time_is_not_cancelled_later(timeout_at: Timeout) -> None:
    loop = asyncio.get_running_loop()
    when = loop.time() + 0.3  # far enough for a busy machine to leave the block in time
    async with timeout_at(loop, when):
        await asyncio.sleep(0)
    # Past the deadline: a timer left armed would have fired during this sleep.
    await asyncio.sleep(0.35)
    assert loop.time() > when
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


@TIMEOUTS
async def test_a_deadline_already_past_fires_at_the_first_wait(timeout_at: Timeout) -> None:
    loop = asyncio.get_running_loop()
    reached = []
    with pytest.raises(TimeoutError):
        async with timeout_at(loop, loop.time() - 1):
            reached.append("before any wait")
            await asyncio.sleep(10)
    assert reached == ["before any wait"]


@TIMEOUTS
async def test_a_cancel_from_outside_stays_a_cancel(timeout_at: Timeout) -> None:
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()

    async def waiting() -> None:
        async with timeout_at(loop, loop.time() + 10):
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(waiting())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@TIMEOUTS
async def test_a_cancel_at_the_same_moment_as_the_deadline_stays_a_cancel(
    timeout_at: Timeout,
) -> None:
    loop = asyncio.get_running_loop()

    async def waiting() -> None:
        task = asyncio.current_task()
        assert task is not None
        when = loop.time() + 0.05
        loop.call_at(when, task.cancel)  # someone else cancels at the deadline too
        async with timeout_at(loop, when):
            await asyncio.sleep(10)

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(waiting())


@TIMEOUTS
async def test_nested_deadlines_each_raise_their_own(timeout_at: Timeout) -> None:
    loop = asyncio.get_running_loop()
    # The outer one comes first: the inner block lets the cancel through.
    with pytest.raises(TimeoutError):
        async with timeout_at(loop, loop.time() + 0.05):
            async with timeout_at(loop, loop.time() + 10):
                await asyncio.sleep(10)
    # The inner one comes first: it is caught inside, and the outer one never fires.
    caught = []
    async with timeout_at(loop, loop.time() + 0.5):
        try:
            async with timeout_at(loop, loop.time() + 0.02):
                await asyncio.sleep(10)
        except TimeoutError:
            caught.append("inner")
    assert caught == ["inner"]


@TIMEOUTS
def test_it_needs_a_task_on_a_running_loop(timeout_at: Timeout) -> None:
    loop = asyncio.new_event_loop()
    try:
        entering = timeout_at(loop, 0.0).__aenter__()
        with pytest.raises(RuntimeError):
            entering.send(None)
        entering.close()
    finally:
        loop.close()
