"""The gates of one worker (Admission): the queue in front of each model's servers.

`Admission.enter()` is the pipeline's `queue` stage: it returns a Ticket (the request's slot, released when the
answer is over) at once when a slot is free, or after the request's turn in the gate's fair line; it raises the
503/429 when the line is full or the wait too long. Modules: priority.py (the classes), fair.py (the line's
order), capacity.py (how many at once), gate.py (slots, waiting, bounds).

Several workers: each worker has its own gates and lines, and each worker's limit per replica is its share of
the replica's concurrency, lowered by load the replica's own figures show from elsewhere (capacity.py). Fairness
therefore holds within each worker, and across workers because the kernel spreads connections over them: a key
that floods spreads its requests over every worker's line, and in each line it takes turns with the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ..catalog import Catalog, ModelSpec
from ..observability.admission_metrics import ModelAdmissionMetrics
from ..settings import AdmissionSettings
from ..upstream.pool import UpstreamPool
from .capacity import gate_capacity
from .gate import Bounds, Gate, Ticket
from .priority import Priority


class Admission:
    """Every gate of this worker, one per set of replicas (models on the same servers share their capacity)."""

    def __init__(self, *, settings: AdmissionSettings, workers: int, pool: UpstreamPool) -> None:
        self.settings = settings
        self._workers = workers
        self._pool = pool
        self._bounds = Bounds(
            queue_max=settings.queue_max, key_queue_max=settings.key_queue_max, max_wait_s=settings.max_wait_s
        )
        self._gates: dict[tuple[tuple[str, ...], int], Gate] = {}
        self._metrics: dict[str, ModelAdmissionMetrics] = {}

    def gate_for(self, spec: ModelSpec) -> Gate:
        """The gate of a model's replicas (made on first use; a reload that changes them makes a new one, and the
        old one's tickets still release into it)."""
        key = self._key(spec)
        found = self._gates.get(key)
        if found is None:
            found = Gate(capacity=self._capacity_of(*key), bounds=self._bounds, metrics=self.metrics)
            self._gates[key] = found
            self.metrics(spec.name).capacity.set(found.capacity() or 0)  # then refreshed by publish()
        return found

    def _key(self, spec: ModelSpec) -> tuple[tuple[str, ...], int]:
        return tuple(spec.backends), spec.max_concurrency or self.settings.concurrency

    def _capacity_of(self, urls: tuple[str, ...], concurrency: int) -> Callable[[], int | None]:
        pool, workers = self._pool, self._workers

        def capacity() -> int | None:
            return gate_capacity(pool.replicas_at(urls), concurrency=concurrency, workers=workers, fresh_s=pool.fresh_s)

        return capacity

    def metrics(self, model: str) -> ModelAdmissionMetrics:
        found = self._metrics.get(model)
        if found is None:
            found = self._metrics[model] = ModelAdmissionMetrics(model)
        return found

    async def enter(
        self,
        spec: ModelSpec,
        *,
        key: str,
        weight: float,
        priority: Priority,
        disconnected: Callable[[], Awaitable[Any]] | None = None,
    ) -> Ticket | None:
        """The request's slot (None when admission is off: requests go straight to the servers)."""
        if not self.settings.enabled:
            return None
        return await self.gate_for(spec).enter(
            key=key, weight=weight, model=spec.name, priority=priority, disconnected=disconnected
        )

    def saturated(self, spec: ModelSpec) -> bool:
        """Whether an interactive request to this model would wait now."""
        return self.settings.enabled and self.gate_for(spec).saturated()

    def publish(self, catalog: Catalog) -> None:
        """Set the capacity gauge of every model that has a gate (a request reached its queue) from the live figures:
        the status board's refresh calls it, so that the gauge follows replicas and load between requests."""
        if not self.settings.enabled:
            return
        for spec in catalog.models.values():
            gate = self._gates.get(self._key(spec))
            if gate is not None:
                self.metrics(spec.name).capacity.set(gate.capacity() or 0)

    def describe(self, spec: ModelSpec) -> dict[str, Any]:
        """The model's gate for readiness and the status page: capacity, in flight, waiting, saturated."""
        gate = self.gate_for(spec)
        capacity = gate.capacity()
        return {
            "capacity": capacity,
            "in_flight": sum(gate.in_flight.values()),
            "waiting": {p.value: gate.queue.waiting(p) for p in Priority},
            "saturated": self.settings.enabled and gate.saturated(),
        }
