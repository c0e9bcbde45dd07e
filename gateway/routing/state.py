"""The running policy and its classifier, swapped atomically on reload."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.protocol import Tier
from gateway.routing.classifier import Classifier, build_classifier
from gateway.routing.policy import NodeSpec, Policy, PolicyError, load_policy

log = logging.getLogger("gateway.policy")


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingState:
    """One consistent pair: a request reads it once and uses both halves."""

    policy: Policy
    classifier: Classifier
    loaded_at: float


def load_routing_state(
    path: Path, overrides: Mapping[Tier, tuple[NodeSpec, ...]] | None = None
) -> RoutingState:
    """Load policy + classifier weights (blocking). Raises PolicyError."""
    policy = load_policy(path)
    for tier, nodes in (overrides or {}).items():
        policy = policy.with_nodes(tier, nodes)
    spec = policy.routing.classifier
    try:
        classifier = build_classifier(spec.kind, spec.model_path)
    except (OSError, ValueError, KeyError) as exc:
        raise PolicyError(
            f"cannot load classifier weights: {exc}",
            key="routing.classifier",
            line=None,
            source=str(path),
        ) from exc
    return RoutingState(policy=policy, classifier=classifier, loaded_at=time.time())


class PolicyHolder:
    """Holds the current :class:`RoutingState`; reloads keep the old one when the new fails."""

    def __init__(
        self,
        path: Path,
        initial: RoutingState,
        *,
        overrides: Mapping[Tier, tuple[NodeSpec, ...]] | None = None,
        on_change: Callable[[RoutingState], None] | None = None,
        on_result: Callable[[bool], None] | None = None,
    ) -> None:
        self.path = path
        self.current = initial
        self._overrides = dict(overrides or {})
        self._on_change = on_change
        self._on_result = on_result
        self._lock = asyncio.Lock()
        self._mtime = _mtime(path)
        self.last_error: str | None = None

    async def reload(self) -> bool:
        """Load the file again in a thread; swap only if it is valid. True on success."""
        async with self._lock:
            self._mtime = _mtime(self.path)
            try:
                state = await asyncio.to_thread(load_routing_state, self.path, self._overrides)
            except PolicyError as exc:
                self.last_error = str(exc)
                log.error("policy reload rejected, keeping the running policy: %s", exc)
                if self._on_result:
                    self._on_result(False)
                return False
            self.current = state
            self.last_error = None
            log.info("policy reloaded from %s", self.path)
            if self._on_change:
                self._on_change(state)
            if self._on_result:
                self._on_result(True)
            return True

    async def watch(self, poll_s: float) -> None:
        """Reload whenever the file's modification time or size changes; runs until cancelled."""
        while True:
            await asyncio.sleep(poll_s)
            if _mtime(self.path) != self._mtime:
                await self.reload()


def _mtime(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
