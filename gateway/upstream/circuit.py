"""A per-node circuit breaker: closed, open, half-open with one probe at a time."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True, kw_only=True)
class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures; after ``open_s`` lets one
    probe through (half-open); the probe's success closes it, its failure re-opens it."""

    failure_threshold: int = 3
    open_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _state: CircuitState = field(default=CircuitState.CLOSED, init=False)
    _failures: int = field(default=0, init=False)
    _opened_at: float = field(default=0.0, init=False)
    _probe_in_flight: bool = field(default=False, init=False)

    @property
    def state(self) -> CircuitState:
        if self._state is CircuitState.OPEN and self.clock() - self._opened_at >= self.open_s:
            return CircuitState.HALF_OPEN
        return self._state

    def available(self) -> bool:
        """Whether a request may be sent now (without claiming the half-open probe)."""
        state = self.state
        return state is CircuitState.CLOSED or (
            state is CircuitState.HALF_OPEN and not self._probe_in_flight
        )

    def try_acquire(self) -> bool:
        """Claim permission to send one request; in half-open only one caller gets it."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and not self._probe_in_flight:
            self._state = CircuitState.HALF_OPEN
            self._probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._probe_in_flight = False

    def record_failure(self) -> None:
        self._probe_in_flight = False
        if self._state is CircuitState.HALF_OPEN:
            self._open()
            return
        self._failures += 1
        if self._failures >= self.failure_threshold:
            self._open()

    def release_probe(self) -> None:
        """A probe ended without a verdict (e.g. the client went away): let another try."""
        self._probe_in_flight = False

    def _open(self) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = self.clock()
        self._failures = 0
