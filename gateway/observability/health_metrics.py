"""Failure and health metrics of the gateway (prefix `citadel_llm_`): upstream errors and retries, replica and
breaker state, dependency reachability, Redis/PostgreSQL/Qdrant failures. Labels are bounded: no keys, ids or
free text. The request and business metrics are in metrics.py beside this module; all are exposed on
GET /metrics (exposition.py).

Code elsewhere calls the small functions below, never the metric objects, so label names and sets stay in
one place. `zero_series()` creates every failure series at 0 at start-up, so alert expressions and dashboards
see them (and `increase()` works) before the first failure happens.
"""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge

# The request, business and dependency metrics are in gateway/observability/metrics.py; the failure
# counters other modules record are importable from here too.
from .metrics import POSTGRES_FAILURES, QDRANT_FAILURES
from .metrics import count_postgres_failure as count_postgres_failure
from .metrics import count_qdrant_failure as count_qdrant_failure

# The bounded label values of the failure counters.
UPSTREAM_ERROR_KINDS = ("connect", "timeout", "status_5xx", "broken", "malformed")
RETRY_REASONS = ("connect", "reset", "status_502", "status_503", "status_504")
REDIS_GROUPS = ("limits", "cache")
POSTGRES_OPERATIONS = ("request", "key_lookup", "audit_connect", "audit_write", "feedback")
QDRANT_OPERATIONS = ("request",)

REDIS_FAILURES = Counter(
    "citadel_llm_redis_failures_total",
    "Redis calls that failed or were skipped while Redis was unavailable, by route group and kind",
    ["group", "kind"],
)

# Resilience (gateway/upstream): `replica` is the replica's host:port from config/models.yaml (bounded).
UPSTREAM_ERRORS = Counter(
    "citadel_llm_upstream_errors_total",
    "Failed exchanges with a model server, by model and kind (connect, timeout, status_5xx, broken, malformed)",
    ["model", "kind"],
)
UPSTREAM_RETRIES = Counter(
    "citadel_llm_upstream_retries_total",
    "Requests sent again to a model server (another replica when there is one), by model and reason",
    ["model", "reason"],
)
REPLICA_UP = Gauge(
    "citadel_llm_replica_up",
    "1 while a replica is in rotation (its health probe answers and its circuit breaker is not open)",
    ["model", "replica"],
    multiprocess_mode="livemax",  # over live workers: a dead worker's last value must not stick
)
BREAKER_STATE = Gauge(
    "citadel_llm_breaker_state",
    "Circuit breaker state per replica: 0 closed, 1 half-open, 2 open",
    ["model", "replica"],
    multiprocess_mode="livemax",  # over live workers: a dead worker's last value must not stick
)
BREAKER_CODES = {"closed": 0, "half_open": 1, "open": 2}


def count_redis_failure(group: str, kind: str) -> None:
    """RedisPolicy's on_event hook. `kind` is an error class name or 'circuit_open' (a bounded set)."""
    REDIS_FAILURES.labels(group=group, kind=kind).inc()


def count_upstream_error(model: str, kind: str) -> None:
    """One failed exchange with a model server; `kind` is one of a fixed set (see UPSTREAM_ERRORS)."""
    UPSTREAM_ERRORS.labels(model=model, kind=kind).inc()


def count_retry(model: str, reason: str) -> None:
    """A request sent again after a retryable failure (`reason`: connect, status_502/503/504, broken)."""
    UPSTREAM_RETRIES.labels(model=model, reason=reason).inc()


def set_replica_state(model: str, replica: str, *, up: bool, breaker: str) -> None:
    """Publish a replica's rotation and breaker state (`breaker`: closed, half_open or open)."""
    REPLICA_UP.labels(model=model, replica=replica).set(1 if up else 0)
    BREAKER_STATE.labels(model=model, replica=replica).set(BREAKER_CODES[breaker])


def forget_replica_state(model: str, replica: str) -> None:
    """The replica no longer serves `model` (a config reload): drop its series. With several workers the series
    stay at their last value until the workers restart (prometheus_client cannot drop one from its files)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    REPLICA_UP.remove(model, replica)
    BREAKER_STATE.remove(model, replica)


DEPENDENCY_UP = Gauge(
    "citadel_llm_dependency_up",
    "1 while a dependency answered its last readiness ping (postgres, redis, qdrant)",
    ["dependency"],
    multiprocess_mode="livemax",  # over live workers: a dead worker's last value must not stick
)


def set_dependency_up(dependency: str, up: bool) -> None:
    """Readiness's verdict on a dependency (`dependency`: postgres, redis or qdrant)."""
    DEPENDENCY_UP.labels(dependency=dependency).set(1 if up else 0)


def zero_series(models: list[str]) -> None:
    """Create every failure counter's series at 0 (see the module docstring)."""
    for model in models:
        for kind in UPSTREAM_ERROR_KINDS:
            UPSTREAM_ERRORS.labels(model=model, kind=kind)
        for reason in RETRY_REASONS:
            UPSTREAM_RETRIES.labels(model=model, reason=reason)
    for group in REDIS_GROUPS:
        REDIS_FAILURES.labels(group=group, kind="circuit_open")
    for operation in POSTGRES_OPERATIONS:
        POSTGRES_FAILURES.labels(operation=operation)
    for operation in QDRANT_OPERATIONS:
        QDRANT_FAILURES.labels(operation=operation)
