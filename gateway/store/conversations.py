"""Conversation sessions in PostgreSQL: load (creating on first use), append, list, get, delete."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import ChatSession, SessionMessage


async def owned_session(
    *, session: AsyncSession, session_id: uuid.UUID, key_id: uuid.UUID, is_admin: bool
) -> ChatSession | None:
    """The session if this key may see it (its own, or any for an admin); None otherwise."""
    row = await session.get(ChatSession, session_id)
    if row is None or (row.key_id != key_id and not is_admin):
        return None
    return row


async def load_or_create(
    *, session: AsyncSession, session_id: uuid.UUID, key_id: uuid.UUID, is_admin: bool, model: str | None
) -> list[dict[str, Any]] | None:
    """The stored messages in order; a new id starts an empty session owned by this key.

    None means the id belongs to another key (the caller answers 404, revealing nothing).
    """
    row = await session.get(ChatSession, session_id)
    if row is None:
        session.add(ChatSession(id=session_id, key_id=key_id, model=model))
        await session.commit()
        return []
    if row.key_id != key_id and not is_admin:
        return None
    query = select(SessionMessage.message).where(SessionMessage.session_id == session_id)
    return list((await session.scalars(query.order_by(SessionMessage.position))).all())


async def append(*, session: AsyncSession, session_id: uuid.UUID, messages: list[dict[str, Any]]) -> None:
    """Add messages after the last one (positions keep their order)."""
    last = await session.scalar(
        select(func.coalesce(func.max(SessionMessage.position), -1)).where(SessionMessage.session_id == session_id)
    )
    start = int(last if last is not None else -1) + 1
    session.add_all(
        SessionMessage(session_id=session_id, position=start + offset, message=message)
        for offset, message in enumerate(messages)
    )
    row = await session.get(ChatSession, session_id)
    if row is not None:
        row.updated_at = datetime.now(UTC)
    await session.commit()


async def list_sessions(
    *, session: AsyncSession, key_id: uuid.UUID | None, limit: int, offset: int
) -> Sequence[tuple[ChatSession, int]]:
    """Sessions newest first with their message counts; key_id None lists every key's (admins)."""
    counts = select(SessionMessage.session_id, func.count().label("n")).group_by(SessionMessage.session_id).subquery()
    query = (
        select(ChatSession, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.session_id == ChatSession.id)
        .order_by(ChatSession.updated_at.desc(), ChatSession.id)
        .limit(limit)
        .offset(offset)
    )
    if key_id is not None:
        query = query.where(ChatSession.key_id == key_id)
    return [(row, int(n)) for row, n in (await session.execute(query)).all()]


async def messages_of(*, session: AsyncSession, session_id: uuid.UUID) -> list[dict[str, Any]]:
    query = select(SessionMessage.message).where(SessionMessage.session_id == session_id)
    return list((await session.scalars(query.order_by(SessionMessage.position))).all())


async def delete_session(*, session: AsyncSession, session_id: uuid.UUID) -> None:
    await session.execute(delete(ChatSession).where(ChatSession.id == session_id))
    await session.commit()
