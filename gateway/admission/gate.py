"""One gate in front of a set of replicas: requests in flight counted against the set's capacity, the rest wait
in a fair line (fair.py) and are let through as slots free.

Who goes when a slot frees: the next interactive waiter; a batch waiter only while no interactive one waits, and
batch work never holds more than capacity - 1 slots (when capacity > 1), so an interactive request arriving
finds a slot at once or waits for at most one running request. A new arrival goes straight through only when
nobody of its class (or, for batch, of any class) waits: it does not jump the line.

A key with nothing in flight at the gate never waits behind another key's work: when no slot is free it takes
the gate's one extra slot, above capacity (one such request at a time per gate). A light key's request then runs
at once, alongside the flood, instead of waiting for a flood request to finish (measured by bench/fairness.py:
that wait was most of a light key's latency under a flood); the model server sees at most capacity + 1.

Bounds: the line holds at most `queue_max` requests and one key at most `key_queue_max` (past them: 503
model_saturated and 429 queue_share_exceeded); nobody waits longer than `max_wait_s` (503 model_saturated); all
with a Retry-After from the gate's running mean service time. A client that hangs up leaves the line at once.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ClientClosedRequest, ModelSaturated, QueueShareExceeded
from ..observability.admission_metrics import ModelAdmissionMetrics
from .fair import FairQueue, Waiter
from .priority import Priority

# Waiters re-check the capacity this often even when no slot frees (a replica back in rotation, vLLM's load
# figures lower): capacity can grow without a release.
RECHECK_S = 0.25
# The mean service time (admission to release) starts here and follows the gate's requests (EWMA).
_INITIAL_SERVICE_S = 1.0
_SERVICE_SMOOTHING = 0.2


@dataclass(frozen=True, slots=True)
class Bounds:
    queue_max: int
    key_queue_max: int
    max_wait_s: float


@dataclass(slots=True, eq=False)
class Ticket:
    """A request's slot: released exactly once, when its answer is over (release() is idempotent)."""

    gate: Gate
    model: str
    priority: Priority
    admitted_at: float
    waited_s: float
    key: str = ""
    extra: bool = False  # the gate's extra slot (a key with nothing in flight, no free slot)
    released: bool = field(default=False)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.gate.release(self)


class Gate:
    """Capacity and waiting line of one set of replicas (the models served by the same servers share it)."""

    def __init__(
        self,
        *,
        capacity: Callable[[], int | None],
        bounds: Bounds,
        metrics: Callable[[str], ModelAdmissionMetrics],
    ) -> None:
        self._capacity = capacity
        self.bounds = bounds
        self._metrics = metrics
        self.queue = FairQueue()
        self.in_flight: dict[Priority, int] = dict.fromkeys(Priority, 0)
        self.by_key: dict[str, int] = {}  # requests in flight per key (the extra slot's rule)
        self.extra_in_use = False
        self.service_s = _INITIAL_SERVICE_S
        self.last_capacity: int | None = None

    # --- state ----------------------------------------------------------------------------------------------------

    def capacity(self) -> int | None:
        capacity = self._capacity()
        self.last_capacity = capacity
        return capacity

    def has_room(self, priority: Priority, capacity: int | None) -> bool:
        if capacity is None:
            return True  # no replica in rotation: let it through to the pool's immediate 503
        total = self.in_flight[Priority.INTERACTIVE] + self.in_flight[Priority.BATCH]
        if total >= capacity:
            return False
        if priority is Priority.BATCH:
            return self.in_flight[Priority.BATCH] < max(1, capacity - 1)
        return True

    def saturated(self) -> bool:
        """Whether an interactive request would wait now (an alias falls back past a saturated target)."""
        return self.queue.waiting(Priority.INTERACTIVE) > 0 or not self.has_room(Priority.INTERACTIVE, self.capacity())

    def retry_after_s(self) -> int:
        """An honest guess at when a slot is likely: the line ahead, served at the gate's pace."""
        slots = max(1, self.last_capacity or 1)
        return max(1, math.ceil(self.service_s * (self.queue.waiting() + 1) / slots))

    # --- admission ------------------------------------------------------------------------------------------------

    async def enter(
        self,
        *,
        key: str,
        weight: float,
        model: str,
        priority: Priority,
        disconnected: Callable[[], Awaitable[Any]] | None = None,
    ) -> Ticket:
        """A slot for one request, at once or after waiting its turn; raises the 503/429/499 when it cannot."""
        metrics = self._metrics(model)
        capacity = self.capacity()  # its gauge: set when the gate is made, then by the status board's refresh
        if self._nobody_ahead(priority) and self.has_room(priority, capacity):
            self.queue.served_at_once(key=key, weight=weight, priority=priority)
            return self._admit(key, model, priority, waited_s=0.0, metrics=metrics)
        if priority is Priority.INTERACTIVE and not self.extra_in_use and not self.by_key.get(key):
            self.extra_in_use = True
            self.queue.served_at_once(key=key, weight=weight, priority=priority)
            return self._admit(key, model, priority, waited_s=0.0, metrics=metrics, extra=True)
        self._check_bounds(key, model, priority, metrics)
        started = time.monotonic()
        waiter = self.queue.push(key=key, weight=weight, model=model, priority=priority, now=started)
        metrics.queued(priority, 1)
        try:
            await self._wait(waiter, started, disconnected, metrics)
        except BaseException:
            if waiter.admitted.done():  # let through just as it gave up (cancelled): the slot goes to the next
                self.in_flight[priority] -= 1
                self.dispatch()
            else:
                self.queue.remove(waiter)
                metrics.queued(priority, -1)
            raise
        return self._admit(key, model, priority, waited_s=time.monotonic() - started, metrics=metrics, counted=True)

    def _nobody_ahead(self, priority: Priority) -> bool:
        if priority is Priority.INTERACTIVE:
            return self.queue.waiting(Priority.INTERACTIVE) == 0
        return self.queue.waiting() == 0

    def _check_bounds(self, key: str, model: str, priority: Priority, metrics: ModelAdmissionMetrics) -> None:
        bounds = self.bounds
        if self.queue.waiting() >= bounds.queue_max:
            metrics.shed(priority, "queue_full")
            raise ModelSaturated(
                f"The model '{model}' is saturated: {bounds.queue_max} requests are already waiting for it. "
                "Retry after the time in Retry-After.",
                retry_after_s=self.retry_after_s(),
            )
        if self.queue.waiting_for(key) >= bounds.key_queue_max:
            metrics.shed(priority, "key_share")
            raise QueueShareExceeded(
                f"This key already has {bounds.key_queue_max} requests waiting for the model '{model}', the most "
                "one key may. Wait for some to finish.",
                retry_after_s=self.retry_after_s(),
            )

    async def _wait(
        self,
        waiter: Waiter,
        started: float,
        disconnected: Callable[[], Awaitable[Any]] | None,
        metrics: ModelAdmissionMetrics,
    ) -> None:
        watcher = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        deadline = started + self.bounds.max_wait_s
        try:
            while not waiter.admitted.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    metrics.shed(waiter.priority, "timeout")
                    raise ModelSaturated(
                        f"The model '{waiter.model}' is saturated: the request waited "
                        f"{self.bounds.max_wait_s:g} s at the gateway without a free slot. Retry after the time in "
                        "Retry-After.",
                        retry_after_s=self.retry_after_s(),
                    )
                waiting_on: set[asyncio.Future[Any]] = {waiter.admitted}
                if watcher is not None:
                    waiting_on.add(watcher)
                await asyncio.wait(waiting_on, timeout=min(remaining, RECHECK_S), return_when=asyncio.FIRST_COMPLETED)
                if waiter.admitted.done():
                    return
                if watcher is not None and watcher.done():
                    metrics.shed(waiter.priority, "client_gone")
                    raise ClientClosedRequest("The client closed the connection while the request waited.")
                self.dispatch()  # capacity may have grown without a release
        finally:
            if watcher is not None:
                watcher.cancel()

    def _admit(
        self,
        key: str,
        model: str,
        priority: Priority,
        *,
        waited_s: float,
        metrics: ModelAdmissionMetrics,
        counted: bool = False,
        extra: bool = False,
    ) -> Ticket:
        if not counted and not extra:  # a waiter's slot was counted when dispatch() let it through
            self.in_flight[priority] += 1
        self.by_key[key] = self.by_key.get(key, 0) + 1
        metrics.admitted(priority, waited_s)
        return Ticket(self, model, priority, time.monotonic(), waited_s, key, extra)

    def dispatch(self) -> None:
        """Let waiters through while there is room: interactive first, batch only when no interactive waits."""
        capacity = self.capacity()
        while True:
            waiter = self.queue.peek(Priority.INTERACTIVE)
            if waiter is None:
                waiter = self.queue.peek(Priority.BATCH)
            if waiter is None or not self.has_room(waiter.priority, capacity):
                return
            self.queue.pop(waiter.priority)
            self._metrics(waiter.model).queued(waiter.priority, -1)
            self.in_flight[waiter.priority] += 1
            waiter.admitted.set_result(None)

    def release(self, ticket: Ticket) -> None:
        if ticket.extra:
            self.extra_in_use = False
        else:
            self.in_flight[ticket.priority] -= 1
        left = self.by_key[ticket.key] - 1
        if left:
            self.by_key[ticket.key] = left
        else:
            del self.by_key[ticket.key]
        self._metrics(ticket.model).in_flight.dec()
        duration = time.monotonic() - ticket.admitted_at
        self.service_s += _SERVICE_SMOOTHING * (duration - self.service_s)
        self.dispatch()
