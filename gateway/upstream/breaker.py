"""A circuit breaker per replica: closed -> open after consecutive failures -> half-open after a cool-down that
doubles while trials keep failing -> closed on a success.

Written here rather than taken from aiobreaker or purgatory: neither grows the cool-down on repeated failures,
both wrap calls (a stream's outcome is known only when the stream ends, long after the call returned), and the
whole state machine is a few lines with an injectable clock for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


class CircuitBreaker:
    """Counts consecutive failures; `allow()` says whether a request may go to the replica now."""

    def __init__(
        self,
        *,
        failure_threshold: int,
        cooldown_s: float,
        max_cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self._threshold = failure_threshold
        self._base_cooldown = cooldown_s
        self._max_cooldown = max(max_cooldown_s, cooldown_s)
        self._clock = clock
        self.on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._cooldown = cooldown_s
        self._opened_at = 0.0
        self._trial_in_flight = False
        self.successes = 0  # requests it answered, ever

    @property
    def state(self) -> BreakerState:
        """The state as of now: an open breaker whose cool-down has passed reads as half-open."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._cooldown:
            self._set(BreakerState.HALF_OPEN)
        return self._state

    @property
    def cooldown_s(self) -> float:
        return self._cooldown

    def allow(self) -> bool:
        """Whether a request may be sent now (without taking the half-open trial slot)."""
        state = self.state
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self._trial_in_flight)

    def acquire(self) -> bool:
        """Like `allow()`, and in half-open state reserve the single trial request."""
        if not self.allow():
            return False
        if self._state is BreakerState.HALF_OPEN:
            self._trial_in_flight = True
        return True

    def release(self) -> None:
        """A request ended without a verdict on the replica (the client left): free the trial slot."""
        self._trial_in_flight = False

    def record_success(self) -> None:
        self.successes += 1  # the prober reads it: a replica that answers requests is busy, not dead
        self._failures = 0
        self._trial_in_flight = False
        self._cooldown = self._base_cooldown
        if self._state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN:
            # The trial failed: open again, and wait longer before the next one.
            self._trial_in_flight = False
            self._cooldown = min(self._cooldown * 2, self._max_cooldown)
            self._open()
        elif self._state is BreakerState.CLOSED and self._failures >= self._threshold:
            self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self.on_change is not None:
                self.on_change(state)
