"""Admission queue and alias metrics (`citadel_llm_queue_*`, `citadel_llm_admission_*`, `citadel_llm_alias_*`).

Labels are bounded: model and alias names from config/models.yaml, the priority class (interactive, batch), and
the outcomes and fallback reasons listed here. Gauges sum over the live workers (each worker has its own queue).
Code elsewhere calls the functions below, never the metric objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from ..admission.priority import Priority

if TYPE_CHECKING:
    from ..aliases import AliasChoice

# A wait at the gateway is tens of milliseconds when a slot frees soon, up to the maximum wait (60 s by default).
WAIT_BUCKETS = (0.005, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
# How an admission ended: let through at once, after waiting, or shed (and why).
OUTCOMES = ("immediate", "after_wait", "queue_full", "key_share", "timeout", "client_gone")
SHED_OUTCOMES = ("queue_full", "key_share", "timeout")
FALLBACK_REASONS = ("not_allowed", "unavailable", "saturated", "context")

QUEUE_DEPTH = Gauge(
    "citadel_llm_queue_depth",
    "Requests waiting at the gateway for a model server slot, by model and priority class",
    ["model", "priority"],
    multiprocess_mode="livesum",
)
QUEUE_WAIT = Histogram(
    "citadel_llm_queue_wait_seconds",
    "Time a request waited at the gateway before it was sent to a model server (0 when admitted at once)",
    ["model", "priority"],
    buckets=WAIT_BUCKETS,
)
ADMISSIONS = Counter(
    "citadel_llm_admission_total",
    "Admission decisions by model, class and outcome (immediate, after_wait; shed: queue_full, key_share, timeout;"
    " client_gone: the client hung up while waiting)",
    ["model", "priority", "outcome"],
)
IN_FLIGHT = Gauge(
    "citadel_llm_admission_in_flight",
    "Requests the gateway has admitted to a model's servers and not finished",
    ["model"],
    multiprocess_mode="livesum",
)
CAPACITY = Gauge(
    "citadel_llm_admission_capacity",
    "Requests the gateway may have in flight to a model's servers at once, as last computed (replicas in rotation,"
    " their concurrency and live load)",
    ["model"],
    multiprocess_mode="livesum",
)
FALLBACKS = Counter(
    "citadel_llm_alias_fallbacks_total",
    "Alias targets passed over, by alias, the target skipped and why (not_allowed, unavailable, saturated, context)",
    ["alias", "target", "reason"],
)
ALIAS_ROUTED = Counter(
    "citadel_llm_alias_requests_total", "Requests to an alias by the target that took them", ["alias", "target"]
)


class ModelAdmissionMetrics:
    """One model's metric children, made once (a child lookup per request costs more than the update)."""

    __slots__ = ("_depth", "_outcomes", "_wait", "capacity", "in_flight", "model")

    def __init__(self, model: str) -> None:
        self.model = model
        self._depth = {p: QUEUE_DEPTH.labels(model, p.value) for p in Priority}
        self._wait = {p: QUEUE_WAIT.labels(model, p.value) for p in Priority}
        self._outcomes = {(p, o): ADMISSIONS.labels(model, p.value, o) for p in Priority for o in OUTCOMES}
        self.in_flight = IN_FLIGHT.labels(model)
        self.capacity = CAPACITY.labels(model)

    def queued(self, priority: Priority, delta: int) -> None:
        self._depth[priority].inc(delta)

    def admitted(self, priority: Priority, waited_s: float) -> None:
        self._wait[priority].observe(waited_s)
        self._outcomes[(priority, "after_wait" if waited_s > 0 else "immediate")].inc()
        self.in_flight.inc()

    def shed(self, priority: Priority, outcome: str) -> None:
        self._outcomes[(priority, outcome)].inc()


def zero_alias_series(aliases: dict[str, tuple[str, ...]]) -> None:
    """Create each alias's series at 0 (alias -> its targets), so dashboards and `increase()` see them before the
    first request to the alias."""
    for alias, targets in aliases.items():
        for target in targets:
            ALIAS_ROUTED.labels(alias, target)
            for reason in FALLBACK_REASONS:
                FALLBACKS.labels(alias, target, reason)


def count_alias(choice: AliasChoice) -> None:
    """A request to an alias: the target that took it, and each target passed over with its reason."""
    ALIAS_ROUTED.labels(choice.alias, choice.target.name).inc()
    for target, reason in choice.skipped:
        FALLBACKS.labels(choice.alias, target, reason.value).inc()
