"""A key's own usage (`GET /v1/usage`), and the time window shared with the admin audit and usage routes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy.ext.asyncio import AsyncSession

from ..auth import Permission, PrincipalDep, require
from ..errors import InvalidRequest
from ..protocol.admin import UsageReport, UsageRow
from ..store import audit_queries
from ..store.db import SessionDep
from .openapi_schema import KEYED_ERRORS, errors

router = APIRouter(prefix="/v1", tags=["usage"])

# Bounded so one query cannot scan years of audit rows.
MAX_WINDOW = timedelta(days=366)


class Window:
    """`since`/`until` query parameters (ISO 8601); default: the last 24 hours."""

    def __init__(
        self,
        since: Annotated[datetime | None, Query()] = None,
        until: Annotated[datetime | None, Query()] = None,
    ) -> None:
        self.until = _aware(until) if until else datetime.now(UTC)
        self.since = _aware(since) if since else self.until - timedelta(days=1)
        if self.since >= self.until:
            raise InvalidRequest("'since' must be before 'until'.", param="since")
        if self.until - self.since > MAX_WINDOW:
            raise InvalidRequest("The window may span at most 366 days.", param="since")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def usage_report(
    *, session: AsyncSession, window: Window, key_id: uuid.UUID | None, model: str | None
) -> UsageReport:
    rows = await audit_queries.usage(
        session=session, since=window.since, until=window.until, key_id=key_id, model=model
    )
    return UsageReport(
        since=window.since,
        until=window.until,
        data=[UsageRow(key_id=k, model=m, requests=r, prompt_tokens=p, completion_tokens=c) for k, m, r, p, c in rows],
    )


@router.get("/usage", dependencies=[Depends(require(Permission.USAGE_READ))], responses=errors(*KEYED_ERRORS))
async def own_usage(
    session: SessionDep,
    principal: PrincipalDep,
    window: Annotated[Window, Depends()],
    model: Annotated[str | None, Query(max_length=256)] = None,
) -> UsageReport:
    """This key's requests and tokens per model over a window (default: the last 24 hours)."""
    return await usage_report(session=session, window=window, key_id=principal.key_id, model=model)
