"""The status page's numbers: per-model rates and latency percentiles over the last minutes, for all workers.

Every worker keeps a ring buffer of snapshots of the aggregated registry (every worker's values, see
exposition.py), one every few seconds; a window's figures are the difference between the newest snapshot
and the oldest one inside the window, so whichever worker answers shows the same global view. The admission
queue's figures (capacity, in flight, waiting) are gauges: read as they are now, summed over the live workers.
The page's batches are not in these snapshots (metrics carry no ids): batch_status.py reads them from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Metric

from ..admission.priority import Priority
from ..catalog import Catalog
from .exposition import scrape_registry
from .metrics import LATENCY_BUCKETS

log = logging.getLogger(__name__)

BOUNDS = (*LATENCY_BUCKETS, math.inf)
PRIORITIES = tuple(priority.value for priority in Priority)


@dataclass
class ModelCounts:
    """Cumulative counts of one model at one moment."""

    buckets: list[float] = field(default_factory=lambda: [0.0] * len(BOUNDS))
    requests: float = 0.0
    errors: float = 0.0  # 5xx answers: the gateway's or the model's fault, not the client's
    completion_tokens: float = 0.0
    cache_hits: float = 0.0
    cache_misses: float = 0.0


@dataclass(slots=True)
class ModelQueue:
    """One model's admission gauges at one moment, summed over the live workers (each worker has its own gate)."""

    capacity: float | None = None  # None: no gauge yet (admission off, or no request to the model so far)
    in_flight: float = 0.0
    waiting: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PRIORITIES, 0.0))


@dataclass
class Snapshot:
    at: float
    models: dict[str, ModelCounts]
    replicas: dict[str, dict[str, float]]  # model -> replica -> 1 up / 0 down
    queues: dict[str, ModelQueue] = field(default_factory=dict)


def snapshot(metrics: Iterable[Metric], *, at: float) -> Snapshot:
    """Sum the samples the status page needs, per model, over endpoints and workers."""
    models: dict[str, ModelCounts] = {}
    replicas: dict[str, dict[str, float]] = {}
    queues: dict[str, ModelQueue] = {}
    index = {_le(bound): i for i, bound in enumerate(BOUNDS)}
    for metric in metrics:
        for sample in metric.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            model = labels.get("model")
            if model is None:
                continue
            if name == "citadel_llm_replica_up":
                replicas.setdefault(model, {})[labels.get("replica", "")] = value
                continue
            if name in _QUEUE_GAUGES:
                _add_queue_sample(queues.setdefault(model, ModelQueue()), name, labels, value)
                continue
            counts = models.get(model)
            if counts is None:
                counts = models[model] = ModelCounts()
            if name == "citadel_llm_request_duration_seconds_bucket":
                i = index.get(labels.get("le", ""))
                if i is not None:
                    counts.buckets[i] += value
            elif name == "citadel_llm_requests_total":
                counts.requests += value
                if labels.get("status", "").startswith("5"):
                    counts.errors += value
            elif name == "citadel_llm_completion_tokens_total":
                counts.completion_tokens += value
            elif name == "citadel_llm_cache_requests_total":
                if labels.get("result") == "hit":
                    counts.cache_hits += value
                else:
                    counts.cache_misses += value
    return Snapshot(at=at, models=models, replicas=replicas, queues=queues)


_QUEUE_GAUGES = frozenset(
    {"citadel_llm_admission_capacity", "citadel_llm_admission_in_flight", "citadel_llm_queue_depth"}
)


def _add_queue_sample(queue: ModelQueue, name: str, labels: dict[str, str], value: float) -> None:
    # Summed: in multiprocess mode the gauges are already one sample per model (livesum); a registry that
    # still carries a `pid` label per worker adds up the same way.
    if name == "citadel_llm_admission_capacity":
        queue.capacity = (queue.capacity or 0.0) + value
    elif name == "citadel_llm_admission_in_flight":
        queue.in_flight += value
    else:
        priority = labels.get("priority", "")
        if priority in queue.waiting:
            queue.waiting[priority] += value


def _le(bound: float) -> str:
    # prometheus_client writes bucket bounds with floatToGoString: 1 -> "1.0", 0.025 -> "0.025".
    return "+Inf" if bound == math.inf else repr(float(bound))


def quantile(q: float, buckets: list[float]) -> float | None:
    """histogram_quantile over cumulative bucket counts (linear inside a bucket), in seconds."""
    total = buckets[-1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(BOUNDS, buckets, strict=True):
        if count >= rank:
            if bound == math.inf:
                return LATENCY_BUCKETS[-1]  # beyond the last finite bucket: report its bound, like Prometheus
            inside = count - lower_count
            fraction = (rank - lower_count) / inside if inside > 0 else 1.0
            return lower_bound + (bound - lower_bound) * fraction
        lower_bound, lower_count = bound, count
    return None


class StatusBoard:
    """A ring buffer of snapshots and the per-model figures over the last `window_s` seconds."""

    def __init__(self, catalog: Catalog, *, window_s: float = 300.0, interval_s: float = 5.0) -> None:
        self.catalog = catalog
        self.window_s = window_s
        self.interval_s = interval_s
        self._ring: deque[Snapshot] = deque(maxlen=int(window_s / interval_s) + 2)

    def take(self) -> Snapshot:
        """Read every worker's metrics now and keep the snapshot (the background loop's job)."""
        shot = self.read()
        self._ring.append(shot)
        return shot

    def read(self) -> Snapshot:
        return snapshot(scrape_registry().collect(), at=time.monotonic())

    @contextlib.asynccontextmanager
    async def running(self, *, before: Callable[[], None] | None = None) -> AsyncIterator[None]:
        """Snapshot every `interval_s` seconds while the gateway runs, calling `before` first each time."""
        self.take()
        task = asyncio.create_task(self._loop(before), name="status-snapshots")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self, before: Callable[[], None] | None) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                if before is not None:
                    before()
                self.take()
            except Exception:  # a bad read must not end the snapshots for good
                log.exception("status page: could not read the metrics")

    def data(self) -> dict[str, Any]:
        """The status page's JSON: one entry per model of the catalogue, traffic or not."""
        now = self.read()  # not kept: polls must not push older snapshots out of the window
        base = next((s for s in self._ring if s.at >= now.at - self.window_s), now)
        seconds = now.at - base.at
        rows = []
        for name, spec in self.catalog.models.items():
            new = now.models.get(name, ModelCounts())
            old = base.models.get(name, ModelCounts()) if base is not now else ModelCounts()
            rows.append(self._row(name, spec.display_name, spec.latency_target_ms, new, old, seconds, now))
        return {"window_s": round(seconds, 1), "window_max_s": self.window_s, "models": rows}

    def _row(
        self,
        name: str,
        display_name: str,
        target_ms: int,
        new: ModelCounts,
        old: ModelCounts,
        seconds: float,
        now: Snapshot,
    ) -> dict[str, Any]:
        buckets = [a - b for a, b in zip(new.buckets, old.buckets, strict=True)]
        requests = new.requests - old.requests
        hits, misses = new.cache_hits - old.cache_hits, new.cache_misses - old.cache_misses
        p50, p95 = quantile(0.5, buckets), quantile(0.95, buckets)
        return {
            "model": name,
            "display_name": display_name,
            "health": _health(now.replicas.get(name)),
            "requests": int(requests),
            "latency_target_ms": target_ms,
            "p50_ms": round(p50 * 1000, 1) if p50 is not None else None,
            "p95_ms": round(p95 * 1000, 1) if p95 is not None else None,
            "tokens_per_s": round((new.completion_tokens - old.completion_tokens) / seconds, 2) if seconds else None,
            "error_rate": round((new.errors - old.errors) / requests, 4) if requests else None,
            "cache_hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
            "admission": _admission(now.queues.get(name)),
        }


def _admission(queue: ModelQueue | None) -> dict[str, Any] | None:
    """Capacity, in flight, waiting per class and saturated, all workers together; None without figures
    (admission off, or no request to the model yet).

    Saturated as readiness says it (gateway/admission/gate.py): an interactive request would wait now, because
    interactive ones already wait or every slot is taken. Capacity 0 means no replica in rotation (requests are
    not held then: they get the pool's 503 at once), so it shows as unknown and never as saturated.
    """
    if queue is None:
        return None
    capacity = int(queue.capacity) if queue.capacity else None
    in_flight = int(queue.in_flight)
    waiting = {priority: int(count) for priority, count in queue.waiting.items()}
    full = capacity is not None and in_flight >= capacity
    return {
        "capacity": capacity,
        "in_flight": in_flight,
        "waiting": waiting,
        "saturated": waiting[Priority.INTERACTIVE.value] > 0 or full,
    }


def _health(replicas: dict[str, float] | None) -> str:
    """up: every replica in rotation; degraded: some; down: none; unknown: not probed yet."""
    if not replicas:
        return "unknown"
    up = sum(1 for value in replicas.values() if value >= 1)
    if up == len(replicas):
        return "up"
    return "degraded" if up else "down"
