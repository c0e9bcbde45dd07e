"""The event loop ``serve`` runs on: uvloop where it is installed, else asyncio's own.

uvloop (libuv underneath) does the gateway's socket and timer work in C: in
``bench/overhead.py`` it spends about 5% less CPU per request than asyncio's loop
(docs/benchmarks.md). It installs on Linux and macOS, not on Windows.
``GATEWAY_EVENT_LOOP`` chooses:

- ``auto`` (the default): uvloop when it can be imported, else asyncio's loop;
- ``uvloop``: uvloop, and a start-up error where it is missing;
- ``asyncio``: asyncio's loop, e.g. to rule the loop out when chasing a problem.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

EventLoopKind = Literal["auto", "uvloop", "asyncio"]
EVENT_LOOPS: Final[tuple[EventLoopKind, ...]] = ("auto", "uvloop", "asyncio")


class EventLoopUnavailable(ValueError):
    """``GATEWAY_EVENT_LOOP`` names a loop that cannot be imported here."""


@dataclass(frozen=True, slots=True)
class EventLoop:
    """The loop chosen: its name for the logs, and what makes one (None: asyncio's)."""

    name: Literal["uvloop", "asyncio"]
    factory: Callable[[], asyncio.AbstractEventLoop] | None


def choose_event_loop(kind: EventLoopKind) -> EventLoop:
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise EventLoopUnavailable(
                    "GATEWAY_EVENT_LOOP=uvloop, but uvloop is not installed (it has no "
                    "Windows build); set GATEWAY_EVENT_LOOP=auto or asyncio"
                ) from None
        else:
            return EventLoop("uvloop", uvloop.new_event_loop)
    return EventLoop("asyncio", None)


__all__ = ["EVENT_LOOPS", "EventLoop", "EventLoopKind", "EventLoopUnavailable", "choose_event_loop"]
