"""Audit retention: delete audit rows older than the retention setting, in short batches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from ..store.models import AuditEvent

TABLE = AuditEvent.__table__.fullname  # type: ignore[attr-defined]
# Oldest first, `$2` rows per statement: each batch is a short transaction, so no long lock is held.
# bandit B608: the table name comes from the model (a constant); the values are bound parameters ($1, $2).
_PURGE = (
    f"DELETE FROM {TABLE} WHERE id IN "  # nosec B608
    f"(SELECT id FROM {TABLE} WHERE occurred_at < $1 ORDER BY occurred_at LIMIT $2)"
)


def _row_count(status: str) -> int:
    """The row count at the end of a command tag such as 'DELETE 480'."""
    return int(status.rsplit(" ", 1)[-1])


async def purge_older_than(dsn: str, days: float, batch_rows: int = 10_000) -> int:
    """Delete audit rows older than `days`, batch_rows per transaction (short locks); returns rows deleted.

    llm.usage_daily keeps its history: it is small (one row per key, model and day) and usage over a window
    older than the retention still comes from it, for its whole days.
    """
    cutoff = datetime.now(UTC) - timedelta(days=days)
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "citadel-audit-retention"})
    deleted = 0
    try:
        while True:
            count = _row_count(await conn.execute(_PURGE, cutoff, batch_rows))
            deleted += count
            if count < batch_rows:
                return deleted
    finally:
        await conn.close()
