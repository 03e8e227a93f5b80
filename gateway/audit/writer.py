"""AuditLog: batches audit records into PostgreSQL off the request path, through the spool while it is away.

Records form one queue, oldest first: spool segments on disk, then chunks handed off by a full memory
queue (the backlog), then the memory queue. Only the oldest part is ever written, so rows reach
audit_log in the order they were recorded, and every insert is `ON CONFLICT (event_id) DO NOTHING`,
so a batch written twice (a replay after a commit whose answer was lost) inserts nothing twice.
The same statement adds the rows it inserted to the daily usage rollup (llm.usage_daily), so the rollup
counts each row once and commits or fails together with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import String
from sqlalchemy.dialects import postgresql

from gateway.audit.record import COLUMNS, AuditRecord
from gateway.audit.spool import DropLog, Spool, SpoolBusy
from gateway.observability.health_metrics import count_postgres_failure
from gateway.store.models import NO_KEY, NO_MODEL, AuditEvent, UsageDaily

log = logging.getLogger(__name__)

TABLE = AuditEvent.__table__.fullname  # type: ignore[attr-defined]
USAGE_TABLE = UsageDaily.__table__.fullname  # type: ignore[attr-defined]
_COLS = ", ".join(COLUMNS)


def _column_sql(name: str) -> tuple[str, str]:
    """(its type in the staging table, how a value is stored): strings arrive as text and PostgreSQL cuts
    them to the column's width (an explicit cast to varchar(n) truncates), so a client's long X-Request-ID
    never fails a batch and Python spends nothing on it."""
    sql_type = AuditEvent.__table__.c[name].type
    if isinstance(sql_type, String) and sql_type.length:
        return "text", f"CAST({{}} AS VARCHAR({sql_type.length}))"
    return sql_type.compile(dialect=postgresql.dialect()), "{}"


_SQL = {name: _column_sql(name) for name in COLUMNS}
# A per-connection staging table: COPY into it, then one INSERT ... SELECT that skips known event_ids.
# COPY + INSERT ... SELECT beat executemany 1.2-1.7x on 500-row batches (bench/audit.py measures both).
# A temporary table uses local buffers, never synchronized scans, so the SELECT reads rows in COPY order
# and ids are assigned in the order the rows were recorded.
STAGING = "citadel_audit_staging"
CREATE_STAGING = (
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGING} "
    f"({', '.join(f'{name} {sql_type}' for name, (sql_type, _) in _SQL.items())}) ON COMMIT DELETE ROWS"
)
# The rows an insert really made (RETURNING skips those ON CONFLICT left out), summed per UTC day, key and
# model into usage_daily. In key order, so two writers upserting the same rows lock them in the same order
# (no deadlock between gateway workers).
# bandit B608 (here and in the statements below): every name and literal put into these statements is a
# constant of this module or of the models (tables, columns, the sentinel ids); request values go in only as
# bound parameters ($n) or through COPY.
_ROLLUP = (
    f"INSERT INTO {USAGE_TABLE} AS u (day, key_id, model, requests, prompt_tokens, completion_tokens) "  # nosec B608
    f"SELECT (occurred_at AT TIME ZONE 'UTC')::date, COALESCE(key_id, '{NO_KEY}'::uuid), "
    f"COALESCE(model, '{NO_MODEL}'), count(*), COALESCE(sum(prompt_tokens), 0), COALESCE(sum(completion_tokens), 0) "
    "FROM ins WHERE kind = 'api' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 "
    "ON CONFLICT (day, key_id, model) DO UPDATE SET requests = u.requests + EXCLUDED.requests, "
    "prompt_tokens = u.prompt_tokens + EXCLUDED.prompt_tokens, "
    "completion_tokens = u.completion_tokens + EXCLUDED.completion_tokens"
)


def _with_rollup(insert: str) -> str:
    """One statement: the audit insert, then the rollup of what it inserted; its value is the rows inserted."""
    returning = "RETURNING occurred_at, kind, key_id, model, prompt_tokens, completion_tokens"
    return f"WITH ins AS ({insert} {returning}), rollup AS ({_ROLLUP}) SELECT count(*) FROM ins"  # nosec B608


MERGE = _with_rollup(
    f"INSERT INTO {TABLE} ({_COLS}) "  # nosec B608
    f"SELECT {', '.join(store.format(name) for name, (_, store) in _SQL.items())} FROM {STAGING} "
    "ON CONFLICT (event_id) DO NOTHING"
)
_VALUES = ", ".join(store.format(f"${i}::{sql_type}") for i, (sql_type, store) in enumerate(_SQL.values(), 1))
_INSERT_ONE = _with_rollup(
    f"INSERT INTO {TABLE} ({_COLS}) VALUES ({_VALUES}) ON CONFLICT (event_id) DO NOTHING"  # nosec B608
)

MIB = 1024 * 1024
# Most rows per transaction, when more than batch_size are waiting (a backlog, a replay): one commit for
# 5,000 rows instead of ten took the writer from 17k to 23k rows/s in bench/audit.py.
MAX_BATCH = 5_000
SLOTS = 64  # spool sub-folders, one per live writer process (gateway workers each have one)


class AuditLog:
    """The audit writer: `record()` on the request path, a background task that writes batches.

    Call `record()` from the event loop's thread. Counters: `queue_depth` (rows in memory, not yet in
    PostgreSQL or the spool), `spooled_rows` (rows ever written to the spool), `written_rows` (rows
    inserted into audit_log), `replayed_rows` (rows read back from the spool and stored),
    `dropped_rows` (lost: memory and spool both full, the spool's disk failing, or rejected by PostgreSQL
    as invalid), `spool_bytes` (on disk, waiting), `connected`.
    """

    def __init__(
        self,
        dsn: str | None,
        spool_dir: Path | str,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 0.5,
        queue_max: int = 50_000,
        spool_max_bytes: int = 256 * MIB,
        write_timeout_s: float = 2.0,
        retry_max_s: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self._spool_root = Path(spool_dir)
        self._batch_size = batch_size
        self._max_batch = max(batch_size, MAX_BATCH)
        self._flush_interval_s = flush_interval_s
        self._queue_max = queue_max
        self._spool_max_bytes = spool_max_bytes
        self._write_timeout_s = write_timeout_s
        self._retry_min_s = min(0.25, retry_max_s)
        # The server gives up on a statement when the writer does, so an abandoned write frees its locks.
        self._server_settings = {
            "application_name": "citadel-audit",
            "statement_timeout": str(max(1, int(write_timeout_s * 1000))),
        }
        self._retry_max_s = retry_max_s

        self._queue: deque[AuditRecord] = deque()
        # Whole queues handed off by record() when full, oldest first; the flusher moves them to the spool.
        self._backlog: deque[Collection[AuditRecord]] = deque()
        self._backlog_rows = 0
        # The batch being written; older than everything in the backlog and the queue.
        self._inflight: list[AuditRecord] = []

        self._spool: Spool | None = None
        self._orphans: list[Spool] = []  # spools left by writers that are gone; replayed, then released
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-spool")
        self._conn: asyncpg.Connection | None = None
        self._retry_at = 0.0
        self._retry_s = self._retry_min_s
        self._down_since: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = False

        self._drops = DropLog("audit memory queue full (PostgreSQL and the spool are behind)")
        self._rejected = DropLog("audit rows rejected by PostgreSQL as invalid")
        self.spooled_rows = 0
        self.written_rows = 0
        self.replayed_rows = 0

    # The request path

    def record(self, rec: AuditRecord) -> None:
        """Queue one record: O(1), no I/O, never raises or blocks."""
        if self._closed:
            self._drops.add()
            return
        queue = self._queue
        if len(queue) >= self._queue_max:
            if self._backlog_rows >= self._queue_max:
                self._drops.add()
                return
            # Hand the whole queue to the flusher for the spool (older rows stay ahead of newer ones).
            self._backlog.append(queue)
            self._backlog_rows += len(queue)
            self._queue = queue = deque()
            self._wake.set()
        queue.append(rec)
        if len(queue) == self._batch_size:
            self._wake.set()

    # Counters

    @property
    def queue_depth(self) -> int:
        return len(self._queue) + self._backlog_rows + len(self._inflight)

    @property
    def dropped_rows(self) -> int:
        spools = [self._spool, *self._orphans] if self._spool else self._orphans
        return self._drops.count + self._rejected.count + sum(s.dropped for s in spools)

    @property
    def spool_bytes(self) -> int:
        spools = [self._spool, *self._orphans] if self._spool else self._orphans
        return sum(s.pending_bytes for s in spools)

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    # Life cycle

    async def start(self) -> None:
        """Open the spool and start the background flusher; PostgreSQL is connected lazily by it."""
        await self._open_spools()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flush everything to PostgreSQL within timeout_s; what does not make it goes to the spool."""
        if self._stopping:
            return
        deadline = time.monotonic() + timeout_s
        self._stopping = True
        self._wake.set()
        await self.start()  # a writer never started still spools what it was given
        assert self._task is not None
        # Keep time to write the remainder to the local disk, which is fast and bounded.
        budget = timeout_s - min(1.0, timeout_s * 0.25)
        done, _ = await asyncio.wait({self._task}, timeout=budget)
        if not done:
            log.warning("audit: close timed out writing to PostgreSQL; the rest goes to the spool")
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._closed = True  # from here on record() counts drops: nothing is left behind unnoticed
        await self._spill_memory()
        self._drop_connection()
        for spool in [self._spool, *self._orphans]:
            if spool is not None:
                await self._in_spool_thread(spool.close)
        self._executor.shutdown(wait=False)
        log.info(
            "audit: closed in %.1fs (written %d, spooled %d, waiting on disk %d bytes, dropped %d)",
            timeout_s - (deadline - time.monotonic()),
            self.written_rows,
            self.spooled_rows,
            self.spool_bytes,
            self.dropped_rows,
        )

    # The flusher

    async def _run(self) -> None:
        while not self._stopping:
            # A step first: rows spooled by an earlier run are replayed as soon as the writer starts.
            await self._guarded_step()
            await self._sleep()
        # Shutting down: one last pass, with a connection attempt even while backing off.
        await self._guarded_step(final=True)

    async def _sleep(self) -> None:
        self._wake.clear()
        if self._stopping or self._backlog or len(self._queue) >= self._batch_size:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._flush_interval_s):
                await self._wake.wait()

    async def _guarded_step(self, *, final: bool = False) -> None:
        try:
            await self._step(final=final)
        except Exception as exc:
            # A bug must not stop auditing: keep the batch in line, drop the connection, go on.
            log.error("audit writer: unexpected %s; retrying", type(exc).__name__)
            self._requeue_inflight()
            self._drop_connection()
            await asyncio.sleep(self._flush_interval_s)

    async def _step(self, *, final: bool = False) -> None:
        """Move the oldest rows forward: backlog to the spool, then spool and queue to PostgreSQL."""
        await self._spill_backlog()
        if not await self._connect(force=final):
            await self._spill_memory()
            return
        while True:
            if not await self._replay_spools():
                await self._spill_memory()
                return
            await self._spill_backlog()
            if not self._spools_empty():
                continue  # the backlog just went to the spool: it is older than the queue
            if not self._queue:
                return
            self._inflight = self._take_batch()
            if not await self._write(self._inflight):
                await self._spill_memory()
                return
            self._inflight = []

    def _take_batch(self) -> list[AuditRecord]:
        queue = self._queue
        return [queue.popleft() for _ in range(min(self._max_batch, len(queue)))]

    # The spool side (every call runs on the one spool thread, in order)

    async def _in_spool_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _open_spools(self) -> None:
        if self._spool is None:
            self._spool, self._orphans = await self._in_spool_thread(self._claim_spools)

    def _claim_spools(self) -> tuple[Spool, list[Spool]]:
        """Take the first free slot folder; also adopt left-over slots that hold rows, to replay them."""
        own: Spool | None = None
        orphans: list[Spool] = []
        for slot in range(SLOTS):
            path = self._spool_root / str(slot)
            if own is not None and not path.is_dir():
                continue
            try:
                spool = Spool(path, max_bytes=self._spool_max_bytes)
            except SpoolBusy:
                continue
            if own is None:
                own = spool
            elif spool.is_empty:
                spool.close()
            else:
                orphans.append(spool)
        if own is None:
            raise SpoolBusy(f"all {SLOTS} audit spool slots under {self._spool_root} are in use")
        return own, orphans

    def _spools_empty(self) -> bool:
        return not self._orphans and (self._spool is None or self._spool.is_empty)

    async def _to_spool(self, chunks: Iterable[Collection[AuditRecord]]) -> None:
        rows = [rec for chunk in chunks for rec in chunk]
        if rows:
            assert self._spool is not None
            self.spooled_rows += await self._in_spool_thread(self._spool.append, rows)

    async def _spill_backlog(self) -> None:
        chunks = list(self._backlog)
        self._backlog.clear()
        self._backlog_rows = 0
        await self._to_spool(chunks)

    async def _spill_memory(self) -> None:
        """Everything in memory to the spool, oldest first: the batch in flight, the backlog, the queue."""
        self._requeue_inflight()
        queue, self._queue = self._queue, deque()
        self._backlog.append(queue)
        self._backlog_rows += len(queue)
        await self._spill_backlog()

    def _requeue_inflight(self) -> None:
        if self._inflight:
            self._backlog.appendleft(self._inflight)
            self._backlog_rows += len(self._inflight)
            self._inflight = []

    async def _replay_spools(self) -> bool:
        """Write every spooled segment, oldest first, removing each once stored; False if PostgreSQL failed."""
        for spool in list(self._orphans):
            if not await self._replay(spool):
                return False
            await self._in_spool_thread(spool.close)
            self._orphans.remove(spool)
        return self._spool is None or await self._replay(self._spool)

    async def _replay(self, spool: Spool) -> bool:
        if spool.is_empty:
            return True
        await self._in_spool_thread(spool.seal)
        for segment in spool.segments():
            records: list[AuditRecord] = await self._in_spool_thread(spool.read, segment)
            for start in range(0, len(records), self._max_batch):
                if not await self._write(records[start : start + self._max_batch]):
                    return False
            await self._in_spool_thread(spool.remove, segment)
            self.replayed_rows += len(records)
            # Rows handed off meanwhile go behind the segments already listed, keeping memory bounded.
            await self._spill_backlog()
        return True

    # The PostgreSQL side

    async def _connect(self, *, force: bool = False) -> bool:
        if self.connected:
            return True
        if self._dsn is None or (not force and time.monotonic() < self._retry_at):
            return False
        try:
            async with asyncio.timeout(self._write_timeout_s):
                conn = await asyncpg.connect(self._dsn, server_settings=self._server_settings)
                try:
                    await conn.execute(CREATE_STAGING)
                except BaseException:
                    conn.terminate()
                    raise
        except Exception as exc:
            self._mark_down(exc, "connect")
            return False
        self._conn = conn
        self._mark_up()
        return True

    async def _write(self, records: list[AuditRecord]) -> bool:
        """Insert records in one transaction; False (connection dropped, backing off) if PostgreSQL failed."""
        conn = self._conn
        assert conn is not None
        rows = [rec.values() for rec in records]
        try:
            async with asyncio.timeout(self._write_timeout_s):
                await conn.execute("BEGIN")
                await conn.copy_records_to_table(STAGING, records=rows, columns=COLUMNS)
                inserted: int = await conn.fetchval(MERGE)
                await conn.execute("COMMIT")
        except asyncio.CancelledError:
            self._drop_connection()
            raise
        except Exception as exc:
            if _is_data_error(exc):
                return await self._write_one_by_one(conn, rows)
            self._mark_down(exc, "write")
            return False
        self.written_rows += inserted
        return True

    async def _write_one_by_one(self, conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> bool:
        """A batch PostgreSQL refused as invalid: store the valid rows, count the invalid ones as dropped."""
        try:
            async with asyncio.timeout(self._write_timeout_s * 2):
                await conn.execute("ROLLBACK")
                for row in rows:
                    try:
                        # One statement, so the row and its rollup share a transaction here too.
                        self.written_rows += await conn.fetchval(_INSERT_ONE, *row)
                    except asyncpg.PostgresError as exc:
                        if not _is_data_error(exc):
                            raise
                        self._rejected.add()
        except asyncio.CancelledError:
            self._drop_connection()
            raise
        except Exception as exc:
            self._mark_down(exc, "write")
            return False
        return True

    def _mark_down(self, exc: BaseException, during: str) -> None:
        # Only the exception's type: its text can quote row values.
        count_postgres_failure(f"audit_{during}")
        self._drop_connection()
        self._retry_at = time.monotonic() + self._retry_s
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "audit: PostgreSQL unavailable (%s during %s); spooling to disk, retrying",
                type(exc).__name__,
                during,
            )
        else:
            log.debug("audit: PostgreSQL still unavailable (%s during %s)", type(exc).__name__, during)
        self._retry_s = min(self._retry_s * 2, self._retry_max_s)

    def _mark_up(self) -> None:
        self._retry_s = self._retry_min_s
        if self._down_since is not None:
            log.info(
                "audit: PostgreSQL reachable again after %.1fs; replaying the spool",
                time.monotonic() - self._down_since,
            )
            self._down_since = None

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None


def _is_data_error(exc: BaseException) -> bool:
    """The rows are at fault, not the server: SQLSTATE class 22 (data) or 23 (integrity), or a value the
    driver could not encode for COPY (a wrong type, an int out of range)."""
    if isinstance(exc, asyncpg.PostgresError):
        return (getattr(exc, "sqlstate", None) or "")[:2] in ("22", "23")
    return isinstance(exc, ValueError | TypeError | OverflowError)
