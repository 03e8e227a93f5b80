"""What the batch metrics and the status page read of llm.batches: counts by status, and the batches running now.

Both read PostgreSQL, where every worker and replica sees the same rows, so the status page's "Batches" section is
the same whichever worker answers (the metric snapshots of window.py cannot carry batch ids, nor should they). The
page shows ids, endpoints, statuses and counts only: never metadata, file ids or contents; a caller that is no
admin sees only its own key's batches, and an anonymous one (CITADEL_STATUS_PAGE_PUBLIC=true) only the count.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..auth import Principal
from ..store.batch_models import BatchRecord

log = logging.getLogger(__name__)

# Not over yet: what the status page lists (gateway/batch/batches.py ACTIVE, in lifecycle order).
RUNNING = ("validating", "in_progress", "finalizing", "cancelling")
# The page polls every few seconds: a bounded list, and an answer without batches rather than a slow page.
PAGE_LIMIT = 20
QUERY_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class BatchCounts:
    """Batches per status (statuses with none are absent) and the pending lines of the in_progress ones."""

    by_status: dict[str, int]
    pending_lines: int


@dataclass(frozen=True, slots=True)
class RunningBatch:
    """One running batch as the status page shows it."""

    id: str
    endpoint: str
    status: str
    completed: int
    failed: int
    total: int
    created_at: int  # Unix seconds, as the API's `created_at`

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "endpoint": self.endpoint,
            "status": self.status,
            "completed": self.completed,
            "failed": self.failed,
            "total": self.total,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class BatchSection:
    """The status page's "batches": `scope` says whose are listed (all: an admin; own: another key's own; none: no
    key, the public page shows the count only); `available` false when the database did not answer in time."""

    available: bool
    scope: str
    running: int | None  # every key's batches not over yet
    batches: tuple[RunningBatch, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "scope": self.scope,
            "running": self.running,
            "batches": [batch.as_json() for batch in self.batches],
        }


async def batch_counts(session: AsyncSession) -> BatchCounts:
    """Two small statements: a GROUP BY on the status index, and the pending lines of the in_progress batches (the
    batch rows' own counts: no scan of batch_lines)."""
    rows = (await session.execute(select(BatchRecord.status, func.count()).group_by(BatchRecord.status))).all()
    pending = await session.scalar(
        select(func.coalesce(func.sum(BatchRecord.total - BatchRecord.completed - BatchRecord.failed), 0)).where(
            BatchRecord.status == "in_progress"
        )
    )
    return BatchCounts(by_status={str(status): int(count) for status, count in rows}, pending_lines=int(pending or 0))


async def running_batches(
    session: AsyncSession, *, key_id: uuid.UUID | None, limit: int = PAGE_LIMIT
) -> tuple[int, list[RunningBatch]]:
    """How many batches run (every key's) and the oldest `limit` of them that `key_id` owns (None: any key's)."""
    running = await session.scalar(select(func.count()).where(BatchRecord.status.in_(RUNNING)))
    if limit <= 0:
        return int(running or 0), []
    query = select(
        BatchRecord.id,
        BatchRecord.endpoint,
        BatchRecord.status,
        BatchRecord.completed,
        BatchRecord.failed,
        BatchRecord.total,
        BatchRecord.created_at,
    ).where(BatchRecord.status.in_(RUNNING))
    if key_id is not None:
        query = query.where(BatchRecord.key_id == key_id)
    rows = (await session.execute(query.order_by(BatchRecord.created_at, BatchRecord.id).limit(limit))).all()
    shown = [
        RunningBatch(r.id, r.endpoint, r.status, r.completed, r.failed, r.total, _seconds(r.created_at)) for r in rows
    ]
    return int(running or 0), shown


async def status_section(
    sessions: async_sessionmaker[AsyncSession] | None, principal: Principal | None
) -> BatchSection | None:
    """The section for this caller; None without a database. A database down or slow gives an unavailable section
    and the rest of the page still shows."""
    if sessions is None:
        return None
    if principal is None:
        scope, owner, limit = "none", None, 0
    elif principal.is_admin:
        scope, owner, limit = "all", None, PAGE_LIMIT
    else:
        scope, owner, limit = "own", principal.key_id, PAGE_LIMIT
    try:
        async with asyncio.timeout(QUERY_TIMEOUT_S), sessions() as session:
            running, shown = await running_batches(session, key_id=owner, limit=limit)
    except Exception as exc:  # the database is down or slow: the page shows the models without batches
        log.debug("status page: batches unavailable (%s)", type(exc).__name__)
        return BatchSection(available=False, scope=scope, running=None)
    return BatchSection(available=True, scope=scope, running=running, batches=tuple(shown))


def _seconds(moment: datetime | None) -> int:
    return int(moment.timestamp()) if moment is not None else 0
