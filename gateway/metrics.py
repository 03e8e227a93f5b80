"""Prometheus metrics of the gateway (prefix `citadel_llm_`). Labels are bounded: no keys, ids or free text.

Exposed on GET /metrics with the observability work; the counters already count.
"""

from __future__ import annotations

from prometheus_client import Counter

REDIS_FAILURES = Counter(
    "citadel_llm_redis_failures_total",
    "Redis calls that failed or were skipped while Redis was unavailable, by route group and kind",
    ["group", "kind"],
)


def count_redis_failure(group: str, kind: str) -> None:
    """RedisPolicy's on_event hook. `kind` is an error class name or 'circuit_open' (a bounded set)."""
    REDIS_FAILURES.labels(group=group, kind=kind).inc()
