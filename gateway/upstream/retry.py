"""When to try the same node again, and how long to wait first.

The attempt loop (:mod:`gateway.upstream.forward`) asks :func:`same_node_delay` after
each failed attempt. A number means "wait this long, then retry this node"; ``None``
means "move on" (the next node of the tier, then the other tier). The rules:

- 429 with ``Retry-After``: wait that long (plus up to 10 % at random) if it fits
  ``max_retry_wait_s`` and the request's remaining time; otherwise move on at once
  (waiting would only burn the client's budget).
- 429 without it: exponential backoff with jitter, ``rate_limited_retries`` times.
- A 5xx other than 503, or a connection reset before the answer: ``same_node_retries``
  quick retries (one by default: a single 500 is often a blip), then move on.
- 503, refused connections, timeouts, protocol errors: move on at once. A node that did
  not answer in time is not asked again by the same request.

Every wait is at least half the nominal backoff, so attempts on one node are spaced
out however the jitter falls: the gateway never hammers an upstream.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable

from gateway.errors import (
    UpstreamConnectionReset,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamStatusError,
)
from gateway.policy.fallback import FallbackSpec

Jitter = Callable[[], float]
"""A source of uniform numbers in [0, 1); tests pass a fixed one."""

RETRY_AFTER_SPREAD = 0.1
RETRY_AFTER_SPREAD_MAX_S = 0.5
"""A Retry-After wait is stretched by up to 10 % (at most 0.5 s) of random extra."""

MIN_ATTEMPT_S = 1.0
"""Time a retry needs after its wait (or the first-token deadline, if shorter) for the
wait to be worth it; otherwise the request fails over at once."""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date).

    None when the header is absent or unreadable; a date in the past gives 0.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; an unmarked one is taken as such
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def backoff_s(retry: int, *, base_s: float, max_s: float, jitter: Jitter = random.random) -> float:
    """Delay before retry number ``retry`` (0-based): "equal jitter" exponential backoff.

    Half of the nominal delay is fixed and half is random, so concurrent retries spread
    out while every one of them still waits at least ``base_s * 2**retry / 2``.
    """
    nominal = min(max_s, base_s * (2.0 ** max(0, retry)))
    return nominal / 2 + jitter() * nominal / 2


def same_node_delay(
    exc: UpstreamError,
    *,
    retries_done: int,
    spec: FallbackSpec,
    remaining_s: float,
    jitter: Jitter | None = None,
) -> float | None:
    """Seconds to wait before retrying the node that raised ``exc``; None to move on.

    ``retries_done`` counts earlier retries of this node for this request;
    ``remaining_s`` is what is left of the request's total deadline.
    """
    jitter = jitter or random.random
    if isinstance(exc, UpstreamRateLimited):
        if retries_done >= spec.rate_limited_retries:
            return None
        if exc.retry_after_s is not None:
            # Never sooner than asked; a little later at random, so that requests throttled
            # together do not all come back at the same instant.
            if exc.retry_after_s > spec.max_retry_wait_s:
                return None
            spread = min(RETRY_AFTER_SPREAD * exc.retry_after_s, RETRY_AFTER_SPREAD_MAX_S)
            wait = min(spec.max_retry_wait_s, exc.retry_after_s + jitter() * spread)
        else:
            wait = backoff_s(
                retries_done, base_s=spec.backoff_base_s, max_s=spec.backoff_max_s, jitter=jitter
            )
    elif isinstance(exc, UpstreamConnectionReset) or (
        isinstance(exc, UpstreamStatusError) and exc.upstream_status >= 500
    ):
        if retries_done >= spec.same_node_retries:
            return None
        wait = backoff_s(
            retries_done, base_s=spec.backoff_base_s, max_s=spec.backoff_max_s, jitter=jitter
        )
    else:
        return None
    # The retry itself needs time too: after the wait, a useful attempt must still fit.
    needed_after_s = min(spec.timeouts.first_token_s, MIN_ATTEMPT_S)
    if wait > spec.max_retry_wait_s or remaining_s - wait < needed_after_s:
        return None
    return wait


__all__ = ["Jitter", "backoff_s", "parse_retry_after", "same_node_delay"]
