"""``asyncio.timeout_at`` on an event loop the caller already holds.

On Python 3.11 every look-up of the running loop (``asyncio.get_running_loop()``,
``asyncio.current_task()`` without a loop) is a ``getpid()`` system call: asyncio checks
that the loop was not inherited through ``fork``. 3.12 dropped the check. Entering
``asyncio.timeout_at`` looks the loop up twice. A request's way to a node used to look it
up six times; the :class:`~gateway.upstream.forward.Forwarder` now takes the loop once,
when the app starts, and hands it down (docs/benchmarks.md: with the request ids, about 1%
of a non-streamed request's CPU).
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class LoopTimeout:
    """``async with LoopTimeout(loop, when)``: :class:`TimeoutError` when the block is
    still running at ``when`` (``loop.time()``), as ``asyncio.timeout_at(when)`` raises it.

    The same rules as asyncio's: the block's task is cancelled at ``when``, and the
    cancellation becomes :class:`TimeoutError` on the way out only when nobody else
    cancelled the task meanwhile (an outer cancel or timeout stays what it is). Enter it
    once, inside a task running on ``loop``.
    """

    __slots__ = ("_cancelling", "_expired", "_handle", "_loop", "_task", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._loop = loop
        self._when = when
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._cancelling = 0
        self._expired = False

    async def __aenter__(self) -> None:
        task = asyncio.current_task(self._loop)  # the loop given: no look-up
        if task is None:
            raise RuntimeError("LoopTimeout must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        # A time already past fires at the loop's next turn, as asyncio's does.
        self._handle = self._loop.call_at(self._when, self._expire)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if (
            self._expired
            and self._task is not None
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc

    def _expire(self) -> None:
        assert self._task is not None
        self._task.cancel()
        self._expired = True
        self._handle = None


__all__ = ["LoopTimeout"]
