"""Reading the audit log: filtered pages for admins, and usage sums per key and model."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import AuditEvent


async def search_audit(
    *,
    session: AsyncSession,
    since: datetime,
    until: datetime,
    limit: int,
    key_id: uuid.UUID | None = None,
    model: str | None = None,
    status: int | None = None,
    kind: str | None = None,
    before_id: int | None = None,
) -> tuple[Sequence[AuditEvent], bool]:
    """Newest first, keyset-paginated by id (a page costs the same at any depth); returns (rows, has_more)."""
    query = select(AuditEvent).where(AuditEvent.occurred_at >= since, AuditEvent.occurred_at < until)
    if key_id is not None:
        query = query.where(AuditEvent.key_id == key_id)
    if model is not None:
        query = query.where(AuditEvent.model == model)
    if status is not None:
        query = query.where(AuditEvent.status == status)
    if kind is not None:
        query = query.where(AuditEvent.kind == kind)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    rows = (await session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit + 1))).all()
    return rows[:limit], len(rows) > limit


async def usage(
    *,
    session: AsyncSession,
    since: datetime,
    until: datetime,
    key_id: uuid.UUID | None = None,
    model: str | None = None,
) -> list[tuple[uuid.UUID | None, str | None, int, int, int]]:
    """(key_id, model, requests, prompt_tokens, completion_tokens) of API requests in the window."""
    query = (
        select(
            AuditEvent.key_id,
            AuditEvent.model,
            func.count(),
            func.coalesce(func.sum(AuditEvent.prompt_tokens), 0),
            func.coalesce(func.sum(AuditEvent.completion_tokens), 0),
        )
        .where(AuditEvent.kind == "api", AuditEvent.occurred_at >= since, AuditEvent.occurred_at < until)
        .group_by(AuditEvent.key_id, AuditEvent.model)
        .order_by(AuditEvent.key_id, AuditEvent.model)
    )
    if key_id is not None:
        query = query.where(AuditEvent.key_id == key_id)
    if model is not None:
        query = query.where(AuditEvent.model == model)
    result = await session.execute(query)
    return [
        (key, model, int(n or 0), int(prompt or 0), int(completion or 0))
        for key, model, n, prompt, completion in result.all()
    ]
