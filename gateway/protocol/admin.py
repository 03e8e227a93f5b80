"""Admin API wire models: keys, audit entries and usage."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from ..admission.priority import Priority
from ..store.models import ApiKey, AuditEvent

# The fields a key is made with and may be changed by, each with its bounds (shared by create and update).
KeyName = Annotated[str, Field(min_length=1, max_length=128)]
# Model or alias names (naming an alias lets the key use every target of it, through the alias).
AllowedModels = Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=100)]
RequestsPerMinute = Annotated[int, Field(ge=1, le=1_000_000)]
TokensPerMinute = Annotated[int, Field(ge=1, le=1_000_000_000)]
# Calls per minute to every route but the inference ones (vectors, usage, sessions, feedback, models, admin).
ControlRequestsPerMinute = Annotated[int, Field(ge=1, le=1_000_000)]
# The key's own vector collections and documents (across them); unset: the server's quotas.
VectorCollections = Annotated[int, Field(ge=1, le=100_000)]
VectorDocuments = Annotated[int, Field(ge=1, le=1_000_000_000)]
# Its share in the admission queue's fair ordering (2: served twice as often as a key of 1 when both wait);
# unset: the role's. Bounded both ways so that no key can starve the others for good, and so that the fair
# queue's cost per request (1 / weight) stays finite: 1 / 1e-310 is already inf.
MIN_QUEUE_WEIGHT = 0.01
MAX_QUEUE_WEIGHT = 100.0
QueueWeight = Annotated[float, Field(ge=MIN_QUEUE_WEIGHT, le=MAX_QUEUE_WEIGHT, allow_inf_nan=False)]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: KeyName
    role: Literal["admin", "user", "viewer"] = "user"
    allowed_models: AllowedModels | None = None
    requests_per_minute: RequestsPerMinute | None = None
    tokens_per_minute: TokensPerMinute | None = None
    control_requests_per_minute: ControlRequestsPerMinute | None = None
    vector_quota_collections: VectorCollections | None = None
    vector_quota_documents: VectorDocuments | None = None
    # With a time zone ("2027-01-01T00:00:00Z"): a time without one names no instant.
    expires_at: AwareDatetime | None = None
    # The highest class its requests may run in: a batch key's requests are always batch.
    priority: Priority = Priority.INTERACTIVE
    queue_weight: QueueWeight | None = None


class KeyUpdate(BaseModel):
    """PATCH /admin/keys/{id}: only the fields sent change; null puts a limit back to its default."""

    model_config = ConfigDict(extra="forbid")

    name: KeyName | None = None
    allowed_models: AllowedModels | None = None
    requests_per_minute: RequestsPerMinute | None = None
    tokens_per_minute: TokensPerMinute | None = None
    control_requests_per_minute: ControlRequestsPerMinute | None = None
    vector_quota_collections: VectorCollections | None = None
    vector_quota_documents: VectorDocuments | None = None
    expires_at: AwareDatetime | None = None
    priority: Priority | None = None
    queue_weight: QueueWeight | None = None

    @field_validator("name", "priority")
    @classmethod
    def _not_null(cls, value: object) -> object:
        # Only runs for fields sent: a key always has a name and a class, so null cannot be one.
        if value is None:
            raise ValueError("may not be null")
        return value

    def changes(self) -> dict[str, object]:
        """The fields sent, with their new values."""
        return {field: getattr(self, field) for field in self.model_fields_set}


class KeyOut(BaseModel):
    """A key as shown after creation: everything but the secret (shown once) and its digest (never)."""

    object: Literal["api_key"] = "api_key"
    id: uuid.UUID
    name: str
    prefix: str
    role: str
    allowed_models: list[str] | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    control_requests_per_minute: int | None
    vector_quota_collections: int | None
    vector_quota_documents: int | None
    expires_at: datetime | None
    priority: Priority
    queue_weight: float | None
    revoked_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, row: ApiKey) -> KeyOut:
        return cls(
            id=row.id,
            name=row.name,
            prefix=row.prefix,
            role=row.role,
            allowed_models=row.allowed_models,
            requests_per_minute=row.requests_per_minute,
            tokens_per_minute=row.tokens_per_minute,
            control_requests_per_minute=row.control_requests_per_minute,
            vector_quota_collections=row.vector_quota_collections,
            vector_quota_documents=row.vector_quota_documents,
            expires_at=row.expires_at,
            priority=Priority(row.priority),
            queue_weight=row.queue_weight,
            revoked_at=row.revoked_at,
            created_at=row.created_at,
        )


class KeyCreated(KeyOut):
    key: str = Field(description="The secret. Shown only in this answer; store it now.")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyOut]


class AuditEntry(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    event_id: uuid.UUID
    occurred_at: datetime
    kind: str
    request_id: str | None
    key_id: uuid.UUID | None
    role: str | None
    method: str
    endpoint: str
    model: str | None
    status: int
    latency_ms: float
    ttft_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cache_hit: bool
    error_type: str | None
    client_addr: str | None
    action: str | None
    target: str | None

    @classmethod
    def of(cls, row: AuditEvent) -> AuditEntry:
        return cls.model_validate(row)


class AuditPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[AuditEntry]
    has_more: bool
    # Pass as `before_id` to get the next (older) page.
    next_before_id: int | None


class UsageRow(BaseModel):
    key_id: uuid.UUID | None
    model: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int


class UsageReport(BaseModel):
    object: Literal["usage"] = "usage"
    since: datetime
    until: datetime
    data: list[UsageRow]


class ConfigReload(BaseModel):
    """What POST /admin/reload changed on the worker that answered (see docs/configuration.md, Live configuration)."""

    object: Literal["config.reload"] = "config.reload"
    models_added: list[str]
    models_removed: list[str] = Field(description="New requests for them answer 404 model_not_found.")
    models_changed: dict[str, list[str]] = Field(description="Per model that changed, the fields that changed.")
    replicas_added: list[str] = Field(description="host:port of each replica added (probed before its first request).")
    replicas_removed: list[str] = Field(
        description="host:port of each replica removed: no new requests; those in flight finish, then it is closed."
    )
    workers_notified: int | None = Field(
        description="Other workers told through Redis to reload too; null without Redis (only this worker reloaded)."
    )
