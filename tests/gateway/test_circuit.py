"""The circuit breaker's state machine, on a clock the test controls."""

from __future__ import annotations

from gateway.upstream.circuit import CircuitBreaker, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failure_threshold=3, open_s=5, clock=Clock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the count
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is CircuitState.CLOSED
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN
    assert not breaker.available() and not breaker.try_acquire()


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, open_s=5, clock=clock)
    breaker.record_failure()
    clock.now += 4.9
    assert not breaker.try_acquire()
    clock.now += 0.2
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.try_acquire()
    assert not breaker.try_acquire()  # a second caller waits for the probe's verdict
    assert not breaker.available()


def test_probe_success_closes_and_failure_reopens() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, open_s=5, clock=clock)
    breaker.record_failure()
    clock.now += 5
    assert breaker.try_acquire()
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN
    clock.now += 4
    assert breaker.state is CircuitState.OPEN  # the cool-down starts again
    clock.now += 1
    assert breaker.try_acquire()
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.try_acquire() and breaker.try_acquire()


def test_a_probe_without_verdict_frees_the_slot() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, open_s=1, clock=clock)
    breaker.record_failure()
    clock.now += 1
    assert breaker.try_acquire()
    breaker.release_probe()
    assert breaker.try_acquire()
