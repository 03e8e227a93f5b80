"""Batches in PostgreSQL: create, find (owner-scoped), cursor pages, cancel, and the runner's state transitions and
per-line results. Every write of a line's result is one UPDATE guarded by `status = 'pending'`, so a line re-run
after a crash is counted and answered once."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, insert, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..errors import InvalidRequest
from ..store.batch_models import BatchLine, BatchRecord
from .validate import InputLine

COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
# A batch can still be cancelled in these states; cancelling or cancelled already is answered as it stands.
CANCELLABLE = ("validating", "in_progress")
ACTIVE = ("validating", "in_progress", "cancelling", "finalizing")
# Lines inserted per statement when a batch starts (PostgreSQL takes at most 32767 bind parameters).
_INSERT_CHUNK = 1000


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class PendingLine:
    """A line the runner may send: where it is, its request body and how many upstream failures it has had."""

    batch_id: str
    line_no: int
    custom_id: str
    body: dict[str, Any]
    attempts: int


@dataclass(frozen=True, slots=True)
class FinishedLine:
    """An answered line, as the output and error files write it."""

    line_no: int
    custom_id: str
    status: str
    response: dict[str, Any] | None
    error: dict[str, Any] | None


async def create(
    session: AsyncSession,
    *,
    key_id: uuid.UUID,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str] | None,
) -> BatchRecord:
    """A new batch in `validating` (the runner validates it), expiring after its completion window."""
    now = datetime.now(UTC)
    record = BatchRecord(
        id=new_batch_id(),
        key_id=key_id,
        endpoint=endpoint,
        input_file_id=input_file_id,
        completion_window=completion_window,
        status="validating",
        metadata_=metadata,
        total=0,
        completed=0,
        failed=0,
        created_at=now,
        expires_at=now + COMPLETION_WINDOWS[completion_window],
    )
    session.add(record)
    await session.flush()
    return record


def _owned(key_id: uuid.UUID | None) -> Any:
    """The owner filter: a key's own batches; None (an admin) all."""
    return BatchRecord.key_id == key_id if key_id is not None else True


async def get(session: AsyncSession, batch_id: str, *, key_id: uuid.UUID | None) -> BatchRecord | None:
    """The batch if it exists and `key_id` owns it (None: any owner)."""
    found: BatchRecord | None = await session.scalar(
        select(BatchRecord).where(BatchRecord.id == batch_id, _owned(key_id))
    )
    return found


async def page(
    session: AsyncSession, *, key_id: uuid.UUID | None, limit: int, after: str | None
) -> tuple[list[BatchRecord], bool]:
    """Up to `limit` batches, newest first, after the batch `after` (a cursor from an earlier page); and whether
    more follow. An `after` this key cannot see is a 400 (as if it did not exist)."""
    query = select(BatchRecord).where(_owned(key_id))
    if after is not None:
        cursor = await get(session, after, key_id=key_id)
        if cursor is None:
            raise InvalidRequest("No batch with the id given in 'after'.", param="after", code="invalid_cursor")
        query = query.where(tuple_(BatchRecord.created_at, BatchRecord.id) < (cursor.created_at, cursor.id))
    query = query.order_by(BatchRecord.created_at.desc(), BatchRecord.id.desc()).limit(limit + 1)
    rows = list((await session.scalars(query)).all())
    return rows[:limit], len(rows) > limit


async def cancel(session: AsyncSession, batch_id: str, *, key_id: uuid.UUID | None) -> BatchRecord | None:
    """Ask the runner to stop the batch (`cancelling`; it then writes what is done and makes it `cancelled`).
    None when the key cannot see it; a 400 for a batch that has ended or is finalizing."""
    now = datetime.now(UTC)
    await session.execute(
        update(BatchRecord)
        .where(BatchRecord.id == batch_id, _owned(key_id), BatchRecord.status.in_(CANCELLABLE))
        .values(status="cancelling", cancelling_at=now)
    )
    record = await get(session, batch_id, key_id=key_id)
    if record is None:
        return None
    await session.refresh(record)
    if record.status not in ("cancelling", "cancelled"):
        raise InvalidRequest(
            f"A batch in status '{record.status}' cannot be cancelled.", param="batch_id", code="invalid_state"
        )
    return record


# The runner's side.


async def in_status(session: AsyncSession, statuses: Collection[str]) -> list[BatchRecord]:
    """The batches in these states, oldest first (the runner serves batches in the order they came)."""
    query = select(BatchRecord).where(BatchRecord.status.in_(statuses)).order_by(BatchRecord.created_at)
    return list((await session.scalars(query)).all())


async def start(session: AsyncSession, batch_id: str, lines: Sequence[InputLine]) -> bool:
    """A validated batch's lines, all pending, and the batch `in_progress`; False when it left `validating`
    meanwhile (cancelled): nothing is written then."""
    moved = await session.execute(
        update(BatchRecord)
        .where(BatchRecord.id == batch_id, BatchRecord.status == "validating")
        .values(status="in_progress", in_progress_at=datetime.now(UTC), total=len(lines))
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        await session.rollback()
        return False
    for first in range(0, len(lines), _INSERT_CHUNK):
        chunk = lines[first : first + _INSERT_CHUNK]
        await session.execute(
            insert(BatchLine),
            [{"batch_id": batch_id, "line_no": n.line_no, "custom_id": n.custom_id, "body": n.body} for n in chunk],
        )
    await session.commit()
    return True


async def fail(session: AsyncSession, batch_id: str, errors: dict[str, Any]) -> None:
    """A batch whose input was refused: `failed`, with the errors naming the lines; no line runs."""
    await session.execute(
        update(BatchRecord)
        .where(BatchRecord.id == batch_id, BatchRecord.status.in_(("validating", "cancelling")))
        .values(status="failed", failed_at=datetime.now(UTC), errors=errors)
    )
    await session.commit()


async def pending_lines(
    session: AsyncSession, batch_id: str, *, limit: int, skip: Collection[int] = ()
) -> list[PendingLine]:
    """The batch's next pending lines in file order, but those in `skip` (in flight or waiting to retry)."""
    query = select(BatchLine.line_no, BatchLine.custom_id, BatchLine.body, BatchLine.attempts).where(
        BatchLine.batch_id == batch_id, BatchLine.status == "pending"
    )
    if skip:
        query = query.where(BatchLine.line_no.not_in(list(skip)))
    rows = (await session.execute(query.order_by(BatchLine.line_no).limit(limit))).all()
    return [PendingLine(batch_id, row.line_no, row.custom_id, row.body, row.attempts) for row in rows]


async def count_pending(session: AsyncSession, batch_id: str) -> int:
    found = await session.scalar(
        select(func.count()).where(BatchLine.batch_id == batch_id, BatchLine.status == "pending")
    )
    return int(found or 0)


_FINISH = text(
    """
    WITH finished AS (
        UPDATE llm.batch_lines
           SET status = :status, response = CAST(:response AS jsonb), error = CAST(:error AS jsonb),
               attempts = attempts + :attempted, finished_at = now()
         WHERE batch_id = :batch_id AND line_no = :line_no AND status = 'pending'
     RETURNING status
    )
    UPDATE llm.batches
       SET completed = completed + (SELECT count(*) FROM finished WHERE status = 'done'),
           failed = failed + (SELECT count(*) FROM finished WHERE status = 'failed')
     WHERE id = :batch_id AND EXISTS (SELECT 1 FROM finished)
    """
)


async def finish_line(
    session: AsyncSession,
    line: PendingLine,
    *,
    done: bool,
    response: str | None,
    error: str | None,
    attempted: int,
) -> bool:
    """A line's outcome (`response`, `error`: JSON text) and the batch's count, in one statement that does
    nothing when the line is no longer pending: a line answered twice (a re-run after a crash) counts once.
    True when this call wrote it."""
    result = await session.execute(
        _FINISH,
        {
            "status": "done" if done else "failed",
            "response": response,
            "error": error,
            "attempted": attempted,
            "batch_id": line.batch_id,
            "line_no": line.line_no,
        },
    )
    await session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def count_attempt(session: AsyncSession, line: PendingLine) -> None:
    """One more failed upstream attempt of a line that stays pending (it is tried again)."""
    await session.execute(
        update(BatchLine)
        .where(BatchLine.batch_id == line.batch_id, BatchLine.line_no == line.line_no, BatchLine.status == "pending")
        .values(attempts=BatchLine.attempts + 1)
    )
    await session.commit()


async def move(session: AsyncSession, batch_id: str, *, to: str, source: Collection[str], **values: Any) -> bool:
    """One lifecycle step (`to`, its `<to>_at` time and `values`) if the batch is still in one of `source`."""
    stamp = {f"{to}_at": datetime.now(UTC)}
    result = await session.execute(
        update(BatchRecord)
        .where(BatchRecord.id == batch_id, BatchRecord.status.in_(source))
        .values(status=to, **stamp, **values)
    )
    await session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def finished_lines(
    session: AsyncSession, batch_id: str, *, status: str, after: int, limit: int
) -> list[FinishedLine]:
    """The batch's `status` ('done' or 'failed') lines after line `after`, in file order, a page at a time (the
    output of a large batch is read in pages, never all at once)."""
    rows = (
        await session.execute(
            select(BatchLine.line_no, BatchLine.custom_id, BatchLine.status, BatchLine.response, BatchLine.error)
            .where(and_(BatchLine.batch_id == batch_id, BatchLine.status == status, BatchLine.line_no > after))
            .order_by(BatchLine.line_no)
            .limit(limit)
        )
    ).all()
    return [FinishedLine(r.line_no, r.custom_id, r.status, r.response, r.error) for r in rows]


async def running(session: AsyncSession) -> list[BatchRecord]:
    """Batches that are not over (the status page, the runner's expiry check)."""
    return await in_status(session, ACTIVE)
