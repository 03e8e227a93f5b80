"""Feedback rows: find the rated request's audit row, and store (or replace) a rating."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import literal_column, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from .models import AuditEvent, Feedback


async def rated_request(
    *, session: AsyncSession, request_id: str, key_id: uuid.UUID | None
) -> tuple[str | None, uuid.UUID | None] | None:
    """(model, key id) of the newest inference request with this id, made by `key_id` (None: any key)."""
    query = (
        select(AuditEvent.model, AuditEvent.key_id)
        .where(AuditEvent.request_id == request_id, AuditEvent.kind == "api", AuditEvent.model.is_not(None))
        .order_by(AuditEvent.occurred_at.desc())
        .limit(1)
    )
    if key_id is not None:
        query = query.where(AuditEvent.key_id == key_id)
    row = (await session.execute(query)).first()
    return (row[0], row[1]) if row is not None else None


async def save_rating(
    *,
    session: AsyncSession,
    request_id: str,
    key_id: uuid.UUID | None,
    rated_by: uuid.UUID,
    model: str | None,
    rating: str,
    comment: str | None,
) -> tuple[Feedback, bool]:
    """Insert the rating, or replace this rater's earlier one; True when it is new."""
    values = {"request_id": request_id, "key_id": key_id, "rated_by": rated_by, "model": model}
    statement: Any = (
        insert(Feedback)
        .values(**values, rating=rating, comment=comment)
        .on_conflict_do_update(
            constraint="uq_feedback_request_id_rated_by",
            set_={"rating": rating, "comment": comment, "rated_at": literal_column("now()")},
        )
        # xmax is 0 on a row this statement inserted, not on one it updated.
        .returning(Feedback, literal_column("xmax = 0").label("inserted"))
    )
    row = (await session.execute(statement)).one()
    return row[0], bool(row[1])
