"""Gateway settings: one pydantic-settings class read from the environment and `.env`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values
from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Everything host-specific comes from here; a required secret has no default (fail fast)."""

    model_config = SettingsConfigDict(env_prefix="CITADEL_", env_file=".env", extra="ignore")

    # The bootstrap admin key. Required: the gateway refuses to start without it.
    admin_key: SecretStr = Field(min_length=16)

    # PostgreSQL (keys, audit log, sessions, model metadata). Unset: only the bootstrap admin key works,
    # audit rows go to the local spool, and routes that need the database answer 503.
    database_url: SecretStr | None = Field(None, validation_alias=AliasChoices("DATABASE_URL", "CITADEL_DATABASE_URL"))
    # How long a key lookup is trusted: a key revoked on another worker can pass for at most this long.
    key_cache_ttl_s: float = Field(5.0, ge=0)

    # Audit log: batched writes; a bounded on-disk spool holds rows while PostgreSQL is away.
    audit_spool_dir: Path = REPO_ROOT / ".cache" / "citadel" / "audit-spool"
    audit_batch_size: int = Field(500, ge=1)
    audit_flush_interval_s: float = Field(0.5, gt=0)
    audit_spool_max_mb: int = Field(256, ge=1)
    audit_retention_days: int = Field(90, ge=1)

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

    # Upstream timeouts in seconds, the defaults of every model (config/models.yaml `timeouts` overrides them per
    # model): connect; first byte (the answer's headers and, for streams, the first event); the whole request.
    upstream_connect_timeout_s: float = Field(2.0, gt=0)
    upstream_read_timeout_s: float = Field(120.0, gt=0)
    upstream_total_timeout_s: float = Field(900.0, gt=0)
    upstream_pool_size: int = Field(256, ge=1)

    # Health probing of every replica (GET /health, and GET /metrics for vLLM's load figures).
    health_interval_s: float = Field(5.0, gt=0)
    health_timeout_s: float = Field(1.0, gt=0)
    # Circuit breaker per replica: opens after this many consecutive failures; stays open for a cool-down that
    # starts at the base and doubles each time a half-open trial fails, up to the max.
    breaker_failure_threshold: int = Field(5, ge=1)
    breaker_cooldown_s: float = Field(1.0, gt=0)
    breaker_max_cooldown_s: float = Field(30.0, gt=0)
    # Retries (connection refused/reset, 502/503/504; before the first byte reaches the client only): attempts in
    # all, including the first; exponential backoff with full jitter from the base, capped; a total time budget.
    retry_max_attempts: int = Field(3, ge=1)
    retry_backoff_base_s: float = Field(0.05, ge=0)
    retry_backoff_max_s: float = Field(1.0, ge=0)
    retry_budget_s: float = Field(5.0, ge=0)
    # Readiness results are reused for this long (probes of every dependency are not repeated per poll).
    readiness_cache_s: float = Field(1.5, ge=0)

    # On SIGTERM: stop accepting, let in-flight requests (streams included) finish for this long, flush the audit
    # log, exit.
    shutdown_grace_s: float = Field(30.0, ge=0)

    # Redis (rate limits, response cache, key revocation across workers), e.g. redis://127.0.0.1:6379/0.
    # Unset: no Redis is configured (the local stack and the tests start services.redis.LocalRedis instead).
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "CITADEL_REDIS_URL"))
    # Connect, reply and pool-wait timeout of every Redis call, in milliseconds: a sidecar answers in well under
    # one, so a dead or hanging Redis costs a request this much, not seconds.
    redis_timeout_ms: float = Field(100.0, gt=0)
    # What the rate limits do while Redis is unavailable: 'open' lets requests through, 'closed' answers 503.
    redis_fail_mode_limits: Literal["open", "closed"] = "open"
    # What the response cache does while Redis is unavailable: 'open' acts as a miss, 'closed' answers 503.
    redis_fail_mode_cache: Literal["open", "closed"] = "open"
    # Redis failures are logged at most once per this many seconds per route group (each one is counted).
    redis_log_interval_s: float = Field(10.0, gt=0)
    # After a connection failure or timeout, Redis is not called for this long (the circuit's cool-down).
    redis_cooldown_ms: float = Field(250.0, ge=0)

    # Rate limits (limit strings as in `limits`: "60/minute"; none: unlimited). Per key they come from the key
    # record, then the role's default here, then the general default.
    rate_limit_requests_default: str | None = "60/minute"
    rate_limit_role_requests: dict[str, str | None] = {"admin": None, "user": "60/minute", "viewer": "60/minute"}
    rate_limit_tokens_default: str | None = "100000/minute"
    rate_limit_role_tokens: dict[str, str | None] = {"admin": None}
    # Requests per minute per key and model ({"mixtral": "10/minute"}), for every role; default for the rest.
    rate_limit_model_requests: dict[str, str | None] = {}
    rate_limit_model_requests_default: str | None = None
    # Control-plane calls (every authenticated route but the three inference routes: vectors, usage,
    # sessions, feedback, models, admin) per key, in a bucket of their own; the key's record first.
    rate_limit_control_default: str | None = "300/minute"
    rate_limit_role_control: dict[str, str | None] = {"admin": None}

    # Response cache (exact match, per key): deterministic requests (temperature 0 or a seed), embeddings,
    # and requests sent with `X-Cache: force`.
    cache_enabled: bool = True
    cache_ttl_s: float = Field(300.0, gt=0)
    cache_max_entry_bytes: int = Field(1_048_576, gt=0)

    # Qdrant (vector collections, retrieval-augmented chat), e.g. http://127.0.0.1:6333. Unset: the client's
    # embedded local mode on disk at qdrant_path (relative to the working directory), which one process
    # only may open: with several workers, set QDRANT_URL (without it, vector routes answer 503).
    qdrant_url: str | None = Field(None, validation_alias=AliasChoices("QDRANT_URL", "CITADEL_QDRANT_URL"))
    qdrant_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("QDRANT_API_KEY", "CITADEL_QDRANT_API_KEY")
    )
    qdrant_path: Path = Path(".cache") / "citadel" / "qdrant"
    # Every Qdrant call gives up after this long (whole seconds, rounded up): a dead Qdrant costs this, not minutes.
    qdrant_timeout_s: float = Field(2.0, gt=0)
    # Every Qdrant collection of this gateway is named <prefix><name> (a shared server may hold other data).
    qdrant_prefix: str = Field("citadel_", pattern=r"^[a-z0-9_-]{1,32}$")
    # Documents per upsert request (larger: 413); they are embedded in batches of max_embedding_inputs.
    vector_max_documents: int = Field(512, ge=1)
    # A document's text plus its metadata, as UTF-8 JSON (larger: 413).
    vector_max_document_bytes: int = Field(65_536, ge=1024)
    # Storage quotas of a key's own collections (the key's record first; admin keys have none unless their
    # record sets one). With the document bound above, a key stores at most quota_documents x
    # max_document_bytes of text and metadata (50,000 x 64 KiB = 3.2 GiB by default), plus the vectors.
    vector_quota_collections: int | None = Field(20, ge=1)
    vector_quota_documents: int | None = Field(50_000, ge=1)


def config_environment(env_file: Path | None = Path(".env")) -> dict[str, str]:
    """The variables config/models.yaml may refer to: `.env` values, overridden by the real environment."""
    values = {k: v for k, v in dotenv_values(env_file).items() if v is not None} if env_file else {}
    return {**values, **os.environ}


def describe_settings_error(exc: ValidationError) -> str:
    """Which variables are missing or invalid, by name, without echoing their values."""
    names = ", ".join(f"CITADEL_{'_'.join(map(str, e['loc'])).upper()}" for e in exc.errors())
    return f"invalid or missing settings: {names} (see .env.example)"
