"""Gateway settings: one pydantic-settings class read from the environment and `.env`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from dotenv import dotenv_values
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class _Group(BaseModel):
    """Settings of one concern; each field is read from CITADEL_<GROUP>_<FIELD> (the names of the flat days)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class AuditSettings(_Group):
    """CITADEL_AUDIT_*: batched writes; a bounded on-disk spool holds rows while PostgreSQL is away."""

    spool_dir: Path = REPO_ROOT / ".cache" / "citadel" / "audit-spool"
    batch_size: Annotated[int, Field(ge=1)] = 500
    flush_interval_s: Annotated[float, Field(gt=0)] = 0.5
    spool_max_mb: Annotated[int, Field(ge=1)] = 256
    retention_days: Annotated[int, Field(ge=1)] = 90


class UpstreamSettings(_Group):
    """CITADEL_UPSTREAM_*: timeouts in seconds, the defaults of every model (config/models.yaml `timeouts`
    overrides them per model): connect; first byte (the answer's headers and, for streams, the first event); the
    whole request. And the connection pool's size."""

    connect_timeout_s: Annotated[float, Field(gt=0)] = 2.0
    read_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    total_timeout_s: Annotated[float, Field(gt=0)] = 900.0
    pool_size: Annotated[int, Field(ge=1)] = 256


class HealthSettings(_Group):
    """CITADEL_HEALTH_*: probing of every replica (GET /health, and GET /metrics for vLLM's load figures)."""

    interval_s: Annotated[float, Field(gt=0)] = 5.0
    timeout_s: Annotated[float, Field(gt=0)] = 1.0


class BreakerSettings(_Group):
    """CITADEL_BREAKER_*: a circuit breaker per replica opens after this many consecutive failures; it stays open
    for a cool-down that starts at the base and doubles each time a half-open trial fails, up to the max."""

    failure_threshold: Annotated[int, Field(ge=1)] = 5
    cooldown_s: Annotated[float, Field(gt=0)] = 1.0
    max_cooldown_s: Annotated[float, Field(gt=0)] = 30.0


class RetrySettings(_Group):
    """CITADEL_RETRY_*: retries (connection refused/reset, 502/503/504; before the first byte reaches the client
    only): attempts in all, including the first; exponential backoff with full jitter from the base, capped; a
    total time budget."""

    max_attempts: Annotated[int, Field(ge=1)] = 3
    backoff_base_s: Annotated[float, Field(ge=0)] = 0.05
    backoff_max_s: Annotated[float, Field(ge=0)] = 1.0
    budget_s: Annotated[float, Field(ge=0)] = 5.0


class RedisSettings(_Group):
    """CITADEL_REDIS_*: how the gateway treats Redis (its address is REDIS_URL)."""

    # Connect, reply and pool-wait timeout of every Redis call, in milliseconds: a sidecar answers in well under
    # one, so a dead or hanging Redis costs a request this much, not seconds.
    timeout_ms: Annotated[float, Field(gt=0)] = 100.0
    # What the rate limits do while Redis is unavailable: 'open' lets requests through, 'closed' answers 503.
    fail_mode_limits: Literal["open", "closed"] = "open"
    # What the response cache does while Redis is unavailable: 'open' acts as a miss, 'closed' answers 503.
    fail_mode_cache: Literal["open", "closed"] = "open"
    # Redis failures are logged at most once per this many seconds per route group (each one is counted).
    log_interval_s: Annotated[float, Field(gt=0)] = 10.0
    # After a connection failure or timeout, Redis is not called for this long (the circuit's cool-down).
    cooldown_ms: Annotated[float, Field(ge=0)] = 250.0


class RateLimitSettings(_Group):
    """CITADEL_RATE_LIMIT_*: limit strings as in `limits` ("60/minute"; none: unlimited). Per key they come from
    the key record, then the role's default here, then the general default."""

    requests_default: str | None = "60/minute"
    role_requests: dict[str, str | None] = {"admin": None, "user": "60/minute", "viewer": "60/minute"}
    tokens_default: str | None = "100000/minute"
    role_tokens: dict[str, str | None] = {"admin": None}
    # Requests per minute per key and model ({"mixtral": "10/minute"}), for every role; default for the rest.
    model_requests: dict[str, str | None] = {}
    model_requests_default: str | None = None
    # Control-plane calls (every authenticated route but the three inference routes: vectors, usage,
    # sessions, feedback, models, admin) per key, in a bucket of their own; the key's record first.
    control_default: str | None = "300/minute"
    role_control: dict[str, str | None] = {"admin": None}


class CacheSettings(_Group):
    """CITADEL_CACHE_*: the response cache (exact match, per key): deterministic requests (temperature 0 or a
    seed), embeddings, and requests sent with `X-Cache: force`."""

    enabled: bool = True
    ttl_s: Annotated[float, Field(gt=0)] = 300.0
    max_entry_bytes: Annotated[int, Field(gt=0)] = 1_048_576


class QdrantSettings(_Group):
    """CITADEL_QDRANT_*: the vector store (its address is QDRANT_URL; unset: the client's embedded local mode on
    disk at `path`, relative to the working directory, which one process only may open: with several workers,
    set QDRANT_URL; without it, vector routes answer 503)."""

    path: Path = Path(".cache") / "citadel" / "qdrant"
    # Every Qdrant call gives up after this long (whole seconds, rounded up): a dead Qdrant costs this, not minutes.
    timeout_s: Annotated[float, Field(gt=0)] = 2.0
    # Every Qdrant collection of this gateway is named <prefix><name> (a shared server may hold other data).
    prefix: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,32}$")] = "citadel_"


class VectorSettings(_Group):
    """CITADEL_VECTOR_*: bounds and quotas of the vector routes."""

    # Documents per upsert request (larger: 413); they are embedded in batches of max_embedding_inputs.
    max_documents: Annotated[int, Field(ge=1)] = 512
    # A document's text plus its metadata, as UTF-8 JSON (larger: 413).
    max_document_bytes: Annotated[int, Field(ge=1024)] = 65_536
    # Storage quotas of a key's own collections (the key's record first; admin keys have none unless their
    # record sets one). With the document bound above, a key stores at most quota_documents x
    # max_document_bytes of text and metadata (50,000 x 64 KiB = 3.2 GiB by default), plus the vectors.
    quota_collections: Annotated[int | None, Field(ge=1)] = 20
    quota_documents: Annotated[int | None, Field(ge=1)] = 50_000


class AdmissionSettings(_Group):
    """CITADEL_ADMISSION_*: the gateway's queue in front of each model (gateway/admission/). Each replica gets at
    most `concurrency` requests at once (config/models.yaml `max_concurrency` overrides it per model), shared
    among the gateway's workers; the rest wait, served key by key (fair) and interactive before batch. A model's
    queue holds at most `queue_max` requests and one key at most `key_queue_max` of them (past that: 503 and 429);
    nobody waits longer than `max_wait_s` (then 503). `enabled` false: requests go straight to the model servers."""

    enabled: bool = True
    concurrency: Annotated[int, Field(ge=1)] = 4
    queue_max: Annotated[int, Field(ge=1)] = 256
    key_queue_max: Annotated[int, Field(ge=1)] = 64
    max_wait_s: Annotated[float, Field(gt=0)] = 60.0


class BatchSettings(_Group):
    """CITADEL_BATCH_*: the Batch API (/v1/files, /v1/batches; docs/batch.md). A file holds at most `max_file_bytes`
    and `max_lines` lines; one key at most `key_max_files` files of `key_max_bytes` in all. One runner across the
    workers sends at most `concurrency` lines at once, at batch priority, checks for work every `poll_s`, and tries a
    line that failed upstream `max_attempts` times. `enabled` false: no runner in this process."""

    enabled: bool = True
    max_file_bytes: Annotated[int, Field(ge=1)] = 100 * 1024 * 1024
    max_lines: Annotated[int, Field(ge=1)] = 50_000
    key_max_files: Annotated[int, Field(ge=1)] = 100
    key_max_bytes: Annotated[int, Field(ge=1)] = 1024 * 1024 * 1024
    concurrency: Annotated[int, Field(ge=1)] = 4
    poll_s: Annotated[float, Field(gt=0)] = 1.0
    max_attempts: Annotated[int, Field(ge=1)] = 3


class Settings(BaseSettings):
    """Everything host-specific comes from here; a required secret has no default (fail fast).

    Settings of one concern are grouped (`settings.redis.timeout_ms`); the environment names stay flat
    (CITADEL_REDIS_TIMEOUT_MS): the `_` after the group's name is the nesting delimiter, split once.
    Keyword arguments may use the same flat names (`Settings(redis_timeout_ms=5)`).
    """

    model_config = SettingsConfigDict(
        env_prefix="CITADEL_", env_file=".env", extra="ignore", env_nested_delimiter="_", env_nested_max_split=1
    )

    # The bootstrap admin key. Required: the gateway refuses to start without it.
    admin_key: SecretStr = Field(min_length=16)

    # PostgreSQL (keys, audit log, sessions, model metadata). Unset: only the bootstrap admin key works,
    # audit rows go to the local spool, and routes that need the database answer 503.
    database_url: SecretStr | None = Field(None, validation_alias=AliasChoices("DATABASE_URL", "CITADEL_DATABASE_URL"))
    # How long a key lookup is trusted: a key revoked on another worker can pass for at most this long.
    key_cache_ttl_s: float = Field(5.0, ge=0)

    config_path: Path = REPO_ROOT / "config" / "models.yaml"
    profile: str | None = None

    host: str = "127.0.0.1"
    port: int = Field(8000, validation_alias=AliasChoices("API_GATEWAY_PORT", "CITADEL_PORT"))
    workers: int = Field(1, ge=1, validation_alias=AliasChoices("API_GATEWAY_WORKERS", "CITADEL_WORKERS"))
    log_level: str = "info"
    # The proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-separated addresses or networks,
    # e.g. "10.0.0.5,10.1.0.0/16"; "*" for all). Empty, the default: none, and the client address in logs and
    # audit rows is the TCP peer's; otherwise any local process could name any address.
    trusted_proxies: str = ""
    # Observability. Logs: one JSON object per line (or `text` for a terminal); prompts and answers are
    # logged only when log_payloads is true. /metrics without a key (Prometheus scrapes without one; it
    # holds no keys, ids or text) unless metrics_public is false: then a key with usage:read (viewer keys).
    # The status page's data without a key only when status_page_public is true (else any valid key).
    log_format: Literal["json", "text"] = "json"
    log_payloads: bool = False
    metrics_public: bool = True
    status_page_public: bool = False

    # Input bounds.
    max_body_bytes: int = Field(1_048_576, gt=0)
    max_n: int = Field(4, ge=1)
    max_embedding_inputs: int = Field(256, ge=1)

    # Readiness results are reused for this long (probes of every dependency are not repeated per poll).
    readiness_cache_s: float = Field(1.5, ge=0)
    # On SIGTERM: stop accepting, let in-flight requests (streams included) finish for this long, flush the audit
    # log, exit.
    shutdown_grace_s: float = Field(30.0, ge=0)

    # Redis (rate limits, response cache, key revocation across workers), e.g. redis://127.0.0.1:6379/0.
    # Unset: no Redis is configured (the local stack and the tests start services.redis.LocalRedis instead).
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "CITADEL_REDIS_URL"))
    # Qdrant (vector collections, retrieval-augmented chat), e.g. http://127.0.0.1:6333; unset: embedded (qdrant_path).
    qdrant_url: str | None = Field(None, validation_alias=AliasChoices("QDRANT_URL", "CITADEL_QDRANT_URL"))
    qdrant_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("QDRANT_API_KEY", "CITADEL_QDRANT_API_KEY")
    )

    audit: AuditSettings = AuditSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    health: HealthSettings = HealthSettings()
    breaker: BreakerSettings = BreakerSettings()
    retry: RetrySettings = RetrySettings()
    redis: RedisSettings = RedisSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    cache: CacheSettings = CacheSettings()
    qdrant: QdrantSettings = QdrantSettings()
    vector: VectorSettings = VectorSettings()
    admission: AdmissionSettings = AdmissionSettings()
    batch: BatchSettings = BatchSettings()

    @model_validator(mode="before")
    @classmethod
    def _group_flat_names(cls, data: Any) -> Any:
        """`redis_timeout_ms=5` (a keyword argument spelled as its variable) lands in `redis.timeout_ms`."""
        if not isinstance(data, dict):
            return data
        grouped = dict(data)
        for key in data:
            found = flat_name_group(key) if key not in cls.model_fields else None
            if found is not None:
                group, name = found
                current = grouped.get(group)
                members = dict(current) if isinstance(current, dict) else {}
                members[name] = grouped.pop(key)
                grouped[group] = members
        return grouped


GROUPS: dict[str, type[_Group]] = {
    "audit": AuditSettings,
    "upstream": UpstreamSettings,
    "health": HealthSettings,
    "breaker": BreakerSettings,
    "retry": RetrySettings,
    "redis": RedisSettings,
    "rate_limit": RateLimitSettings,
    "cache": CacheSettings,
    "qdrant": QdrantSettings,
    "vector": VectorSettings,
    "admission": AdmissionSettings,
    "batch": BatchSettings,
}


def flat_name_group(name: str) -> tuple[str, str] | None:
    """("redis", "timeout_ms") for "redis_timeout_ms": the group and member a flat name stands for, if any."""
    for group, model in GROUPS.items():
        member = name[len(group) + 1 :]
        if name.startswith(group + "_") and member in model.model_fields:
            return group, member
    return None


def config_environment(env_file: Path | None = Path(".env")) -> dict[str, str]:
    """The variables config/models.yaml may refer to: `.env` values, overridden by the real environment."""
    values = {k: v for k, v in dotenv_values(env_file).items() if v is not None} if env_file else {}
    return {**values, **os.environ}


def describe_settings_error(exc: ValidationError) -> str:
    """Which variables are missing or invalid, by name, without echoing their values."""
    names = ", ".join(f"CITADEL_{'_'.join(map(str, e['loc'])).upper()}" for e in exc.errors())
    return f"invalid or missing settings: {names} (see .env.example)"
