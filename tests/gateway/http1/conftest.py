"""The client's tests run on asyncio's event loop and on uvloop, which ``serve`` runs on
where it is installed: their transports differ (uvloop's do not derive from
``asyncio.Transport``), and so may their timing of callbacks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
