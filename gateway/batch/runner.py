"""The batch runner: one across every worker and replica, it validates new batches, sends their lines through the
pipeline at batch priority, and writes the output and error files.

Leadership is a PostgreSQL session advisory lock (pg_try_advisory_lock) held on a connection of its own: the
lock lasts as long as that connection, so when the leading process dies (or its connection drops) PostgreSQL
releases it and another worker's next try takes over. Progress is per line in `batch_lines`: a new leader resumes
with the lines still pending, and a line's result is written by one UPDATE guarded by `status = 'pending'`
(gateway/batch/batches.py), so a line re-run after a crash is answered and counted once.

Failures: a 429 (the key's own limits: batches spend the key's budget) or a 503 `model_saturated` (the model's
queue is full) waits its Retry-After and retries without counting an attempt; other 5xx (upstream errors,
timeouts, unavailable) are tried up to `max_attempts` times with a backoff, then the line fails with its error;
a 4xx fails the line at once (the same request would fail again).

Metrics (gateway/observability/batch_metrics.py): the leader sets the batch gauges at most once a poll; a line is
counted by the write that recorded it, so a line re-run after a crash is counted once too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..auth import Principal
from ..errors import NotFound
from ..errors_backends import is_connection_error
from ..observability import batch_metrics
from ..observability.batch_status import batch_counts
from ..services import Services
from ..settings import BatchSettings
from ..store.batch_models import BatchRecord
from . import batches as rows
from .files import read_file_bytes, store_file
from .line import LineOutcome, load_principal, run_line
from .validate import validate_input

log = logging.getLogger(__name__)

# The advisory lock's key (any constant the schema's other users do not take): "citadel batch" in hex, 63 bits.
LOCK_KEY = 0x636974_6164656C_62
# A key's record is read again after this long: a key revoked mid-batch stops its lines within seconds.
PRINCIPAL_TTL_S = 5.0
# The longest wait between upstream retries of one line (1, 2, 4... seconds before it).
MAX_BACKOFF_S = 30.0
# Lines read per query while writing the output and error files.
_PAGE = 500


@dataclass(slots=True)
class _Known:
    principal: Principal | None
    fresh_until: float


class BatchRunner:
    """The one runner (when this process leads); `running()` keeps it going for as long as the app runs."""

    def __init__(self, *, services: Services, app: Any, dsn: str, settings: BatchSettings) -> None:
        assert services.db_sessions is not None  # the app starts a runner only with a database
        self.services = services
        self.app = app
        self.dsn = dsn
        self.settings = settings
        self.sessions: async_sessionmaker[AsyncSession] = services.db_sessions
        self.leading = False
        self._inflight: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._retry_at: dict[tuple[str, int], float] = {}  # a line's backoff after an upstream failure
        self._paused_until: dict[str, float] = {}  # a key (429) or a batch (503 saturated): monotonic time
        self._principals: dict[uuid.UUID, _Known] = {}
        self._wake = asyncio.Event()
        self._counted_at = -math.inf  # when the batch gauges were last set (monotonic)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        batch_metrics.zero_series()
        task = asyncio.create_task(self._run(), name="batch-runner")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        """Try to lead every poll (on one kept connection: no reconnect per try); while leading, work; on any
        failure let go and try again."""
        while True:
            try:
                connection = await asyncpg.connect(self.dsn, timeout=5)
                try:
                    await self._acquire(connection)
                    log.info("batch runner: leading")
                    self.leading = True
                    batch_metrics.set_leading(True)
                    self._counted_at = -math.inf
                    await self._lead(connection)
                finally:
                    self.leading = False
                    batch_metrics.set_leading(False)
                    await self._stop_lines()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(connection.close(), timeout=5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                level = logging.WARNING if is_connection_error(exc) else logging.ERROR
                log.log(level, "batch runner: %s; trying again", type(exc).__name__)
            await asyncio.sleep(self.settings.poll_s)

    async def _acquire(self, connection: asyncpg.Connection) -> None:
        """Returns once this connection holds the lock (another process leads meanwhile)."""
        while True:
            if await connection.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
                return
            await asyncio.sleep(self.settings.poll_s)

    async def _lead(self, connection: asyncpg.Connection) -> None:
        while True:
            # The lock lives with this connection: if it broke, another worker may lead already.
            await connection.fetchval("SELECT 1")
            await self.tick()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.poll_s)

    async def _stop_lines(self) -> None:
        """Lines in flight when leadership ends stay pending: the next leader sends them again."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()

    async def tick(self) -> None:
        """One pass over the batches that are not over, oldest first."""
        async with self.sessions() as session:
            active = await rows.in_status(session, rows.ACTIVE)
            await self._count(session)
        now = datetime.now(UTC)
        for batch in active:
            try:
                await self._step(batch, now)
            except Exception as exc:
                if is_connection_error(exc):
                    raise  # the database is away: give up leading, try again later
                # One batch's unexpected failure must not stop the others (nor lose leadership over and over).
                log.error("batch %s: %s", batch.id, type(exc).__name__)

    async def _step(self, batch: BatchRecord, now: datetime) -> None:
        """What one batch needs now, by its status."""
        expired = batch.expires_at is not None and batch.expires_at <= now
        busy = self._busy(batch.id)
        if batch.status == "validating":
            if expired:
                await self._close(batch, "expired", source=("validating",))
            else:
                await self._validate(batch)
        elif batch.status == "finalizing":  # a leader stopped while writing the files: write them again
            await self._close(batch, "completed", source=("finalizing",))
        elif batch.status == "cancelling":
            if not busy:
                await self._close(batch, "cancelled", source=("cancelling",))
        elif expired:
            if not busy:
                await self._close(batch, "expired", source=("in_progress",))
        else:
            await self._feed(batch, busy=busy)

    async def _count(self, session: AsyncSession) -> None:
        """The batch gauges, at most once a poll (a tick also runs each time a line finishes)."""
        if time.monotonic() - self._counted_at < self.settings.poll_s:
            return
        counts = await batch_counts(session)
        batch_metrics.set_batch_counts(counts.by_status, pending_lines=counts.pending_lines)
        self._counted_at = time.monotonic()

    def _busy(self, batch_id: str) -> bool:
        return any(key[0] == batch_id for key in self._inflight)

    async def _validate(self, batch: BatchRecord) -> None:
        """The input file checked line by line (in a thread: a 50,000-line file takes a while); a bad line fails
        the batch with the line numbers, else its lines are stored pending and it runs."""
        async with self.sessions() as session:
            principal = await self._principal(session, batch.key_id)
            if principal is None:
                await rows.fail(session, batch.id, _errors("key_revoked", "The batch's API key is revoked or expired."))
                return
            try:
                data = await read_file_bytes(self.sessions, batch.input_file_id)
            except NotFound:  # deleted since the batch was made
                await rows.fail(session, batch.id, _errors("file_not_found", "The input file no longer exists."))
                return
            services = self.services
            checked = await asyncio.to_thread(
                validate_input,
                data,
                endpoint_path=batch.endpoint,
                principal=principal,
                catalog=services.catalog,
                parse=services.inference.parse,
                max_line_bytes=services.settings.max_body_bytes,
            )
            if not checked.ok:
                await rows.fail(session, batch.id, checked.errors_json())
                return
            if await rows.start(session, batch.id, checked.lines):
                log.info("batch %s: %d lines validated", batch.id, len(checked.lines))

    async def _feed(self, batch: BatchRecord, *, busy: bool) -> None:
        """Send the batch's next pending lines while slots are free; finalize it when none is left."""
        free = self.settings.concurrency - len(self._inflight)
        now = time.monotonic()
        paused = max(self._paused_until.get(batch.id, 0.0), self._paused_until.get(str(batch.key_id), 0.0))
        waiting = {key[1] for key, at in self._retry_at.items() if key[0] == batch.id and at > now}
        skip = {key[1] for key in self._inflight if key[0] == batch.id} | waiting
        async with self.sessions() as session:
            if free > 0 and paused <= now:
                principal = await self._principal(session, batch.key_id)
                lines = await rows.pending_lines(session, batch.id, limit=free, skip=skip)
                for line in lines:
                    self._start(batch, line, principal)
                if lines:
                    return
            if busy or waiting or paused > now:
                return
            if await rows.count_pending(session, batch.id):
                return
            await rows.move(session, batch.id, to="finalizing", source=("in_progress",))
        await self._close(batch, "completed", source=("finalizing",))

    def _start(self, batch: BatchRecord, line: rows.PendingLine, principal: Principal | None) -> None:
        key = (batch.id, line.line_no)
        self._retry_at.pop(key, None)
        self._inflight[key] = asyncio.create_task(self._line(batch, line, principal))

    async def _line(self, batch: BatchRecord, line: rows.PendingLine, principal: Principal | None) -> None:
        key = (batch.id, line.line_no)
        try:
            if principal is None:
                error = {"code": "key_revoked", "message": "The batch's API key is revoked or expired."}
                async with self.sessions() as session:
                    if await rows.finish_line(
                        session, line, done=False, response=None, error=_json(error), attempted=0
                    ):
                        batch_metrics.count_line(batch.endpoint, done=False)
                return
            outcome = await run_line(
                self.services, self.app, endpoint_path=batch.endpoint, line=line, principal=principal
            )
            await self._record(batch, line, outcome)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database failed while recording: the line stays pending, tried again
            log.warning("batch %s line %d not recorded: %s", batch.id, line.line_no, type(exc).__name__)
            self._retry_at[key] = time.monotonic() + self.settings.poll_s
        finally:
            self._inflight.pop(key, None)
            self._wake.set()

    async def _record(self, batch: BatchRecord, line: rows.PendingLine, outcome: LineOutcome) -> None:
        status, code = outcome.status_code, outcome.error_code
        key = (batch.id, line.line_no)
        if status == 429 or code == "model_saturated":
            # The key's limits (or the model's full queue) say wait: not the line's fault, no attempt counted.
            holder = str(batch.key_id) if status == 429 else batch.id
            wait_s = outcome.retry_after_s if outcome.retry_after_s is not None else self.settings.poll_s
            self._paused_until[holder] = time.monotonic() + max(wait_s, 0.0)
            return
        async with self.sessions() as session:
            if status == 200:
                if await rows.finish_line(
                    session, line, done=True, response=_json(outcome.response_json()), error=None, attempted=1
                ):
                    batch_metrics.count_line(batch.endpoint, done=True)
                return
            if status >= 500 and line.attempts + 1 < self.settings.max_attempts:
                await rows.count_attempt(session, line)
                self._retry_at[key] = time.monotonic() + min(2.0**line.attempts, MAX_BACKOFF_S)
                return
            error = {"code": code or f"http_{status}", "message": _message(outcome.body)}
            if await rows.finish_line(
                session, line, done=False, response=_json(outcome.response_json()), error=_json(error), attempted=1
            ):
                batch_metrics.count_line(batch.endpoint, done=False)

    async def _close(self, batch: BatchRecord, final: str, *, source: tuple[str, ...]) -> None:
        """Write the output file (done lines) and the error file (failed lines), then the batch's final status."""
        async with self.sessions() as session:
            output_id = await self._write(session, batch, "done")
            error_id = await self._write(session, batch, "failed")
            if await rows.move(
                session, batch.id, to=final, source=source, output_file_id=output_id, error_file_id=error_id
            ):
                log.info("batch %s: %s", batch.id, final)
        for key in [key for key in self._retry_at if key[0] == batch.id]:
            del self._retry_at[key]
        self._paused_until.pop(batch.id, None)

    async def _write(self, session: AsyncSession, batch: BatchRecord, status: str) -> str | None:
        """One JSONL file of the batch's `status` lines in file order (None when there are none), owned by the
        batch's key, purpose `batch_output`."""
        out = bytearray()
        after = 0
        while True:
            page = await rows.finished_lines(session, batch.id, status=status, after=after, limit=_PAGE)
            for line in page:
                out += orjson.dumps(
                    {
                        "id": _request_id(batch.id, line.line_no),
                        "custom_id": line.custom_id,
                        "response": line.response,
                        "error": line.error,
                    }
                )
                out += b"\n"
            if len(page) < _PAGE:
                break
            after = page[-1].line_no
        if not out:
            return None
        name = f"{batch.id}_{'output' if status == 'done' else 'error'}.jsonl"
        stored = await store_file(
            self.sessions, key_id=batch.key_id, purpose="batch_output", filename=name, data=bytes(out)
        )
        return stored.id

    async def _principal(self, session: AsyncSession, key_id: uuid.UUID) -> Principal | None:
        known = self._principals.get(key_id)
        if known is not None and known.fresh_until > time.monotonic():
            return known.principal
        principal = await load_principal(session, key_id)
        self._principals[key_id] = _Known(principal, time.monotonic() + PRINCIPAL_TTL_S)
        return principal


def _errors(code: str, message: str) -> dict[str, Any]:
    return {"object": "list", "data": [{"code": code, "message": message, "line": None, "param": None}]}


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


def _message(body: object) -> str:
    """An error answer's message (OpenAI's shape), else a word about the status."""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return str(message) if message else "The request failed."


def _request_id(batch_id: str, line_no: int) -> str:
    """The output line's id: stable, so a file written again after a crash names each line the same."""
    return "batch_req_" + hashlib.sha256(f"{batch_id}:{line_no}".encode()).hexdigest()[:24]
