"""The request, business and dependency metrics (`citadel_llm_*`); failure and health ones: health_metrics.py.

Label values are bounded: model names from config/models.yaml (anything else is "other"; "none" when a
request names no model), endpoint in {chat, completions, embeddings, other}, status an HTTP code. Never
keys, request ids or free text. Gauges state how several workers combine (`multiprocess_mode`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Resolve the per-model latency targets (200-1500 ms) and the long tail of slow generations.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1, 1.5, 2, 3, 5, 10, 30, 60, 120, 300)
TOKENS_PER_SECOND_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000)
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings"}
RATE_LIMITS = frozenset({"requests", "model_requests", "tokens", "control_requests"})
RATINGS = ("up", "down", "1", "2", "3", "4", "5")

REQUESTS = Counter(
    "citadel_llm_requests_total", "API requests by model, endpoint and HTTP status", ["model", "endpoint", "status"]
)
REQUEST_DURATION = Histogram(
    "citadel_llm_request_duration_seconds",
    "End-to-end request latency in the gateway (whole answer, streams included)",
    ["model", "endpoint"],
    buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "citadel_llm_time_to_first_token_seconds",
    "Streamed requests: time from the request to the first byte of the answer",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
PROMPT_TOKENS = Counter("citadel_llm_prompt_tokens_total", "Prompt tokens reported by the model servers", ["model"])
COMPLETION_TOKENS = Counter(
    "citadel_llm_completion_tokens_total", "Completion tokens reported by the model servers", ["model"]
)
TOKENS_PER_SECOND = Histogram(
    "citadel_llm_tokens_per_second",
    "Completion tokens per second of each successful, uncached request (end to end)",
    ["model"],
    buckets=TOKENS_PER_SECOND_BUCKETS,
)
CACHE_REQUESTS = Counter(
    "citadel_llm_cache_requests_total", "Cacheable requests by result (hit, miss)", ["model", "result"]
)
RATE_LIMITED = Counter(
    "citadel_llm_rate_limited_total",
    "Requests refused with 429, by the limit that refused them (requests, model_requests, tokens)",
    ["model", "limit"],
)
COST = Counter(
    "citadel_llm_cost_total",
    "Cost of the tokens used, from the per-model prices in config/models.yaml (currency of those prices)",
    ["model"],
)
FEEDBACK = Counter("citadel_llm_feedback_total", "User ratings received (POST /v1/feedback)", ["model", "rating"])
POSTGRES_FAILURES = Counter(
    "citadel_llm_postgres_failures_total", "PostgreSQL operations that failed to connect", ["operation"]
)
QDRANT_FAILURES = Counter("citadel_llm_qdrant_failures_total", "Qdrant operations that failed", ["operation"])
CONFIG_RELOADS = Counter(
    "citadel_llm_config_reloads_total",
    "Reloads of config/models.yaml by result (ok: applied; invalid: refused, the running configuration kept)",
    ["result"],
)
CONFIG_RELOAD_RESULTS = ("ok", "invalid")
# Sums over the live workers: a dead worker's queue is gone with it (its spool is replayed by the next one).
AUDIT_QUEUE_DEPTH = Gauge(
    "citadel_llm_audit_queue_depth",
    "Audit records in memory waiting for PostgreSQL or the spool",
    multiprocess_mode="livesum",
)
AUDIT_SPOOLED_ROWS = Gauge(
    "citadel_llm_audit_spooled_rows",
    "Audit rows written to the disk spool (PostgreSQL away or behind) and not yet replayed",
    multiprocess_mode="livesum",
)
AUDIT_SPOOL_BYTES = Gauge(
    "citadel_llm_audit_spool_bytes", "Bytes of audit rows waiting in the disk spool", multiprocess_mode="livesum"
)


def endpoint_label(route_path: str | None) -> str:
    """The `endpoint` label of a route template."""
    return ENDPOINTS.get(route_path or "", "other")


def count_rate_limited(model: str, limit: str) -> None:
    """A 429 from the rate limiter; `limit` is the Decision's `limited_by`."""
    RATE_LIMITED.labels(model=model, limit=limit if limit in RATE_LIMITS else "requests").inc()


def count_feedback(model: str, rating: str) -> None:
    """One rating stored; `rating` is one of RATINGS (validated by the route)."""
    FEEDBACK.labels(model=model, rating=rating if rating in RATINGS else "other").inc()


def count_postgres_failure(operation: str) -> None:
    """A PostgreSQL call that could not reach the database; `operation` is a fixed word (e.g. 'feedback')."""
    POSTGRES_FAILURES.labels(operation=operation).inc()


def count_qdrant_failure(operation: str) -> None:
    """A Qdrant call that failed; `operation` is a fixed word (e.g. 'search', 'upsert')."""
    QDRANT_FAILURES.labels(operation=operation).inc()


def count_config_reload(result: str) -> None:
    """One reload of the models file on this worker; `result` is one of CONFIG_RELOAD_RESULTS."""
    CONFIG_RELOADS.labels(result=result if result in CONFIG_RELOAD_RESULTS else "invalid").inc()


def set_audit_state(*, queue_depth: int, spooled_rows: int, spool_bytes: int) -> None:
    """This worker's audit writer, read just before a scrape (and every few seconds with several workers)."""
    AUDIT_QUEUE_DEPTH.set(queue_depth)
    AUDIT_SPOOLED_ROWS.set(spooled_rows)
    AUDIT_SPOOL_BYTES.set(spool_bytes)
