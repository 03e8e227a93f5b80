"""Reading the audit log: filtered pages for admins, and usage sums per key and model."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Select, cast, func, literal_column, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from .models import NO_KEY, NO_MODEL, AuditEvent, UsageDaily


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
    """(key_id, model, requests, prompt_tokens, completion_tokens) of API requests in the window.

    Whole UTC days inside [since, until) are read from the daily rollup (usage_daily), the partial days at
    either end from audit_log; the sums are the same as over audit_log alone (while it still holds the
    days: retention purges audit rows, not the rollup). One statement, ordered by key_id then model.
    """
    since, until = _utc(since), _utc(until)
    first_day = _next_midnight(since)
    last_day = until.replace(hour=0, minute=0, second=0, microsecond=0)
    # A filter naming a sentinel of the rollup (NO_KEY, NO_MODEL) would also match its NULLs there.
    if first_day >= last_day or key_id == NO_KEY or model == NO_MODEL:
        parts = [_raw_usage(since, until, key_id, model)]
    else:
        parts = [_daily_usage(first_day.date(), last_day.date(), key_id, model)]
        if since < first_day:
            parts.append(_raw_usage(since, first_day, key_id, model))
        if last_day < until:
            parts.append(_raw_usage(last_day, until, key_id, model))
    if len(parts) == 1:
        query = parts[0].order_by(literal_column("key_id"), literal_column("model"))
    else:
        both = union_all(*parts).subquery()
        query = (
            select(
                both.c.key_id,
                both.c.model,
                func.sum(both.c.requests),
                func.sum(both.c.prompt_tokens),
                func.sum(both.c.completion_tokens),
            )
            .group_by(both.c.key_id, both.c.model)
            .order_by(both.c.key_id, both.c.model)
        )
    result = await session.execute(query)
    return [
        (key, model, int(n or 0), int(prompt or 0), int(completion or 0))
        for key, model, n, prompt, completion in result.all()
    ]


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _next_midnight(moment: datetime) -> datetime:
    """The first UTC midnight at or after moment."""
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight if midnight == moment else midnight + timedelta(days=1)


def _raw_usage(
    since: datetime, until: datetime, key_id: uuid.UUID | None, model: str | None
) -> Select[*tuple[Any, ...]]:
    query = (
        select(
            AuditEvent.key_id.label("key_id"),
            AuditEvent.model.label("model"),
            func.count().label("requests"),
            func.coalesce(func.sum(AuditEvent.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(AuditEvent.completion_tokens), 0).label("completion_tokens"),
        )
        .where(AuditEvent.kind == "api", AuditEvent.occurred_at >= since, AuditEvent.occurred_at < until)
        .group_by(AuditEvent.key_id, AuditEvent.model)
    )
    if key_id is not None:
        query = query.where(AuditEvent.key_id == key_id)
    if model is not None:
        query = query.where(AuditEvent.model == model)
    return query


def _daily_usage(first: date, end: date, key_id: uuid.UUID | None, model: str | None) -> Select[*tuple[Any, ...]]:
    """Days first..end (exclusive) from the rollup, its sentinels turned back into NULLs."""
    key = func.nullif(UsageDaily.key_id, NO_KEY)
    name = func.nullif(UsageDaily.model, NO_MODEL)
    query = (
        select(
            key.label("key_id"),
            cast(name, AuditEvent.model.type).label("model"),
            func.sum(UsageDaily.requests).label("requests"),
            func.sum(UsageDaily.prompt_tokens).label("prompt_tokens"),
            func.sum(UsageDaily.completion_tokens).label("completion_tokens"),
        )
        .where(UsageDaily.day >= first, UsageDaily.day < end)
        .group_by(key, name)
    )
    if key_id is not None:
        query = query.where(UsageDaily.key_id == key_id)
    if model is not None:
        query = query.where(UsageDaily.model == model)
    return query
