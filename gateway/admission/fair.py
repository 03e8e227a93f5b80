"""The waiting line of one gate: start-time fair queuing across keys, in two priority classes.

Algorithm (start-time fair queuing, Goyal et al. 1996, with one unit of cost per request):

- Each class (interactive, batch) has a virtual clock V: the start tag of the request it dispatched last.
- A request of key k with weight w arriving in a class gets the start tag S = max(V, F[k]) and moves the key's
  finish tag to F[k] = S + 1/w. Requests leave in increasing S (ties: arrival order).
- So a key with 50 waiting requests holds tags V, V+1, ..., V+49 while a key arriving with one request gets V
  (or V+1): it goes next, not after the 50. Backlogged keys of weights 2 and 1 are served 2:1. A key that was
  idle starts at V, with no credit saved up from its idle time (max(V, F[k])).
- Interactive requests always leave before batch ones (the gate decides whether a batch request may leave at
  all: see gate.py).

Removal (a client that hangs up, a request that waited too long) is lazy: the entry is marked and skipped.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import Counter
from dataclasses import dataclass, field

from .priority import Priority

# F[k] entries no longer matter once V has passed them (max(V, F[k]) = V): dropped when the table grows past this.
_PRUNE_AT = 4096


@dataclass(slots=True, eq=False)
class Waiter:
    """One request waiting for a slot; `admitted` resolves when the gate dispatches it."""

    key: str
    model: str
    priority: Priority
    start_tag: float
    seq: int
    enqueued_at: float
    admitted: asyncio.Future[None] = field(repr=False)
    removed: bool = False


class FairQueue:
    """Start-time fair queuing per class (see the module docstring)."""

    def __init__(self) -> None:
        self._heaps: dict[Priority, list[tuple[float, int, Waiter]]] = {p: [] for p in Priority}
        self._virtual: dict[Priority, float] = dict.fromkeys(Priority, 0.0)
        self._finish: dict[Priority, dict[str, float]] = {p: {} for p in Priority}
        self._seq = itertools.count()
        self._by_key: Counter[str] = Counter()
        self._by_class: Counter[Priority] = Counter()

    def charge(self, *, key: str, weight: float, priority: Priority) -> float:
        """Count one request of a key in its class; returns the request's start tag."""
        finish = self._finish[priority]
        start = max(self._virtual[priority], finish.get(key, 0.0))
        finish[key] = start + 1.0 / weight
        return start

    def served_at_once(self, *, key: str, weight: float, priority: Priority) -> None:
        """A request let through without waiting is served too: it is counted (its key's next request queues
        behind the others' first) and the virtual clock moves to it (a key alone builds up no debt)."""
        self._virtual[priority] = self.charge(key=key, weight=weight, priority=priority)

    def push(self, *, key: str, weight: float, model: str, priority: Priority, now: float) -> Waiter:
        start = self.charge(key=key, weight=weight, priority=priority)
        loop = asyncio.get_running_loop()
        waiter = Waiter(key, model, priority, start, next(self._seq), now, loop.create_future())
        heapq.heappush(self._heaps[priority], (start, waiter.seq, waiter))
        self._by_key[key] += 1
        self._by_class[priority] += 1
        return waiter

    def peek(self, priority: Priority) -> Waiter | None:
        """The next waiter of a class, without taking it out."""
        heap = self._heaps[priority]
        while heap and heap[0][2].removed:
            heapq.heappop(heap)
        return heap[0][2] if heap else None

    def pop(self, priority: Priority) -> Waiter:
        """Take out the next waiter of a class (peek() first: there must be one)."""
        _, _, waiter = heapq.heappop(self._heaps[priority])
        self._virtual[priority] = waiter.start_tag
        self._forget(waiter)
        finish = self._finish[priority]
        if len(finish) > _PRUNE_AT:
            virtual = waiter.start_tag
            for key in [key for key, tag in finish.items() if tag <= virtual]:
                del finish[key]
        return waiter

    def remove(self, waiter: Waiter) -> None:
        """Take a waiter out before its turn (it gave up); a no-op once dispatched or removed."""
        if waiter.removed or waiter.admitted.done():
            return
        self._forget(waiter)

    def _forget(self, waiter: Waiter) -> None:
        waiter.removed = True
        self._by_key[waiter.key] -= 1
        if self._by_key[waiter.key] <= 0:
            del self._by_key[waiter.key]
        self._by_class[waiter.priority] -= 1

    def waiting(self, priority: Priority | None = None) -> int:
        """How many wait (in one class, or in all)."""
        if priority is None:
            return sum(self._by_class.values())
        return self._by_class[priority]

    def waiting_for(self, key: str) -> int:
        return self._by_key.get(key, 0)
