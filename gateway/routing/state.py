"""The running policy and its classifier, swapped atomically on reload.

Reloads are supervised: whatever goes wrong while reading, parsing or adopting a new file
(a :class:`PolicyError`, a file over a limit, a reload past ``reload_timeout_s``, a bug) is
a failed reload: logged, counted through ``on_result``, kept in ``last_error`` for
``/readyz``, and the running policy stays. The watcher keeps watching through all of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gateway.policy.errors import PolicyError
from gateway.policy.file import MAX_WEIGHTS_BYTES, check_file
from gateway.policy.model import NodeSpec, Policy
from gateway.policy.parse import load_policy
from gateway.routing.classifier import Classifier, build_classifier
from hybrid_common.protocol import Tier

log = logging.getLogger("gateway.policy")

RELOAD_TIMEOUT_S: Final = 5.0
"""Longest a reload holds the reload lock; the parse itself stops at its own deadline
(``YAMLLimits.timeout_s``) and every read is size-capped, so its thread ends soon after."""


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
        if spec.model_path is not None:
            check_file(spec.model_path, max_bytes=MAX_WEIGHTS_BYTES)  # not /dev/zero
        classifier = build_classifier(spec.kind, spec.model_path, spec.model_name)
    except (OSError, ValueError, KeyError) as exc:  # PolicyError from check_file included
        named = spec.model_path is not None or spec.model_name is not None
        raise PolicyError(
            f"cannot load classifier weights: {exc}",
            key="routing.classifier.model" if named else "routing.classifier",
            line=spec.line,
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
        reload_timeout_s: float = RELOAD_TIMEOUT_S,
    ) -> None:
        self.path = path
        self.current = initial
        self._overrides = dict(overrides or {})
        self._on_change = on_change
        self._on_result = on_result
        self._reload_timeout_s = reload_timeout_s
        self._lock = asyncio.Lock()
        self._mtime = _mtime(path)
        self.last_error: str | None = None

    async def reload(self) -> bool:
        """Load the file again in a thread; swap only if it is valid. True on success.

        Never raises (but ``CancelledError``): every failure is logged, counted and kept
        in :attr:`last_error`, and the running policy stays.
        """
        async with self._lock:
            self._mtime = _mtime(self.path)
            try:
                async with asyncio.timeout(self._reload_timeout_s):
                    # The thread cannot be stopped, only abandoned: its work is bounded.
                    state = await asyncio.to_thread(load_routing_state, self.path, self._overrides)
            except PolicyError as exc:
                return self._failed(str(exc))
            except TimeoutError:
                return self._failed(
                    f"{self.path}: reading took longer than {self._reload_timeout_s:g} s"
                )
            except Exception as exc:  # a reload is a boundary: nothing may end the watcher
                log.exception("policy reload from %s failed, keeping the running policy", self.path)
                return self._failed(f"{self.path}: unexpected error: {exc!r}", logged=True)
            try:
                # Adopt first: if the node pool cannot take the new policy, the old one stays.
                if self._on_change:
                    self._on_change(state)
            except Exception as exc:
                log.exception(
                    "adopting the policy from %s failed, keeping the running one", self.path
                )
                return self._failed(f"{self.path}: cannot adopt: {exc!r}", logged=True)
            self.current = state
            self.last_error = None
            log.info("policy reloaded from %s", self.path)
            if self._on_result:
                self._on_result(True)
            return True

    async def watch(self, poll_s: float) -> None:
        """Reload whenever the file's modification time or size changes; runs until cancelled.

        An unexpected error in the loop is logged with its traceback, counted as a failed
        reload, and survived: the next change is still picked up.
        """
        while True:
            await asyncio.sleep(poll_s)
            try:
                if _mtime(self.path) != self._mtime:
                    await self.reload()
            except Exception as exc:  # the watcher's outermost boundary
                log.exception("policy watcher error; still watching %s", self.path)
                self._failed(f"{self.path}: policy watcher error: {exc!r}", logged=True)

    def _failed(self, message: str, *, logged: bool = False) -> bool:
        self.last_error = message
        if not logged:
            log.error("policy reload rejected, keeping the running policy: %s", message)
        if self._on_result:
            self._on_result(False)
        return False


def _mtime(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
