"""API keys in PostgreSQL: create (the secret is returned once), find by secret, list, get, update, revoke."""

from __future__ import annotations

import hmac
import secrets
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..admission.priority import Priority
from ..auth import key_digest
from .models import ApiKey

KEY_PREFIX = "ck_"
# "ck_" + 8 characters: enough to find a key's row and to show it, far too little to guess the rest.
PREFIX_LENGTH = 11

# What an update may change. Not the role (a different role is a different key: create one) nor the secret.
UPDATABLE = frozenset(
    {
        "name",
        "allowed_models",
        "requests_per_minute",
        "tokens_per_minute",
        "control_requests_per_minute",
        "vector_quota_collections",
        "vector_quota_documents",
        "expires_at",
        "priority",
        "queue_weight",
    }
)


def new_secret() -> str:
    """A new API key: 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create_key(
    *,
    session: AsyncSession,
    name: str,
    role: str,
    allowed_models: list[str] | None = None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    control_requests_per_minute: int | None = None,
    vector_quota_collections: int | None = None,
    vector_quota_documents: int | None = None,
    expires_at: datetime | None = None,
    priority: Priority = Priority.INTERACTIVE,
    queue_weight: float | None = None,
    created_by: uuid.UUID | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key as a digest; return the row and the secret, which is never stored or shown again."""
    secret = new_secret()
    row = ApiKey(
        name=name,
        prefix=secret[:PREFIX_LENGTH],
        key_hash=key_digest(secret),
        role=role,
        allowed_models=allowed_models,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        control_requests_per_minute=control_requests_per_minute,
        vector_quota_collections=vector_quota_collections,
        vector_quota_documents=vector_quota_documents,
        expires_at=expires_at,
        priority=Priority(priority).value,
        queue_weight=queue_weight,
        created_by=created_by,
    )
    session.add(row)
    await session.flush()
    return row, secret


async def find_by_secret(*, session: AsyncSession, secret: str) -> ApiKey | None:
    """The key row a presented secret belongs to, compared in constant time; None if there is none."""
    if not secret.startswith(KEY_PREFIX) or len(secret) > 256:
        return None
    rows = await session.scalars(select(ApiKey).where(ApiKey.prefix == secret[:PREFIX_LENGTH]))
    digest = key_digest(secret)
    for row in rows:
        if hmac.compare_digest(row.key_hash, digest):
            return row
    return None


async def list_keys(*, session: AsyncSession, limit: int, offset: int, include_revoked: bool) -> Sequence[ApiKey]:
    """Keys newest first."""
    query = select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.id).limit(limit).offset(offset)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return (await session.scalars(query)).all()


async def get_key(*, session: AsyncSession, key_id: uuid.UUID) -> ApiKey | None:
    return await session.get(ApiKey, key_id)


async def update_key(*, session: AsyncSession, key_id: uuid.UUID, changes: Mapping[str, object]) -> ApiKey | None:
    """Set the given fields of a key (None clears a nullable one back to its default); None if there is no such
    key. The caller validates the values; a field outside UPDATABLE is a programming error (ValueError)."""
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise ValueError(f"not updatable: {', '.join(sorted(unknown))}")
    row = await session.get(ApiKey, key_id)
    if row is None:
        return None
    for field, value in changes.items():
        setattr(row, field, Priority(str(value)).value if field == "priority" else value)
    await session.flush()
    return row


async def revoke_key(*, session: AsyncSession, key_id: uuid.UUID) -> ApiKey | None:
    """Mark a key revoked (idempotent: the first revocation time is kept)."""
    row = await session.get(ApiKey, key_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        await session.flush()
    return row


def is_usable(row: ApiKey, *, now: datetime) -> bool:
    """Neither revoked nor expired."""
    return row.revoked_at is None and (row.expires_at is None or row.expires_at > now)
