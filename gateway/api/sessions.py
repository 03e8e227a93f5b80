"""Conversation sessions under /v1/sessions: a key sees its own, an admin sees all."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from ..auth import Permission, Principal, PrincipalDep, require
from ..errors import NotFound
from ..store import conversations as rows
from ..store.db import SessionDep
from ..store.models import ChatSession
from .openapi_schema import KEYED_ERRORS, errors

router = APIRouter(
    prefix="/v1/sessions",
    tags=["sessions"],
    dependencies=[Depends(require(Permission.SESSIONS))],
    responses=errors(*KEYED_ERRORS, 403),  # viewers have no sessions
)


class SessionOut(BaseModel):
    object: Literal["session"] = "session"
    id: uuid.UUID
    model: str | None
    created_at: datetime
    updated_at: datetime
    message_count: int
    messages: list[dict[str, Any]] | None = None

    @classmethod
    def of(cls, row: ChatSession, *, count: int, messages: list[dict[str, Any]] | None = None) -> SessionOut:
        return cls(
            id=row.id,
            model=row.model,
            created_at=row.created_at,
            updated_at=row.updated_at,
            message_count=count,
            messages=messages,
        )


class SessionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SessionOut]


class SessionDeleted(BaseModel):
    object: Literal["session.deleted"] = "session.deleted"
    id: uuid.UUID
    deleted: bool = True


async def _visible(session: SessionDep, session_id: uuid.UUID, principal: Principal) -> ChatSession:
    row = await rows.owned_session(
        session=session, session_id=session_id, key_id=principal.key_id, is_admin=principal.is_admin
    )
    if row is None:
        raise NotFound(f"No session with id {session_id}.", param="session_id")
    return row


@router.get("")
async def list_sessions(
    session: SessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> SessionList:
    """Sessions, most recently used first."""
    key_id = None if principal.is_admin else principal.key_id
    found = await rows.list_sessions(session=session, key_id=key_id, limit=limit, offset=offset)
    return SessionList(data=[SessionOut.of(row, count=count) for row, count in found])


@router.get("/{session_id}", responses=errors(404))
async def get_session(session_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> SessionOut:
    """One session with its messages in order."""
    row = await _visible(session, session_id, principal)
    messages = await rows.messages_of(session=session, session_id=session_id)
    return SessionOut.of(row, count=len(messages), messages=messages)


@router.delete("/{session_id}", responses=errors(404))
async def delete_session(session_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> SessionDeleted:
    await _visible(session, session_id, principal)
    await rows.delete_session(session=session, session_id=session_id)
    return SessionDeleted(id=session_id)
