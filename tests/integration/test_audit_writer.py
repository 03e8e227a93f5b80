"""The audit writer against a real PostgreSQL: batches, shutdown, outages and slowness, restarts, retention.

The tests use a database of their own on the shared server (created and migrated here, dropped at the
end), so the rows they commit never meet other tests; the fault tests stop and start that shared server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from gateway.audit.record import AuditRecord
from gateway.audit.retention import purge_older_than
from gateway.audit.spool import Spool
from gateway.audit.writer import AuditLog
from gateway.store.db import asyncpg_dsn
from services.postgres import LocalPostgres
from tests.support.postgres import fresh_database

FAST: dict[str, Any] = {"batch_size": 100, "flush_interval_s": 0.05, "write_timeout_s": 1.0, "retry_max_s": 0.5}


def make(i: int = 0, **fields: Any) -> AuditRecord:
    base: dict[str, Any] = {"kind": "api", "method": "POST", "endpoint": "/v1/chat/completions", "status": 200}
    return AuditRecord(**{**base, "latency_ms": float(i), "model": "phi3", "key_id": KEY, **fields})


# As the gateway has it: read from api_keys through asyncpg, whose UUID is a subclass of uuid.UUID.
KEY = asyncpg.pgproto.pgproto.UUID(str(uuid.uuid4()))


async def until(condition: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest_asyncio.fixture(scope="module")
async def audit_db(postgres_url: str) -> AsyncIterator[str]:
    """A fresh migrated database on the shared server; yields its plain asyncpg DSN."""
    async with fresh_database(postgres_url, prefix="citadel_audit") as url:
        yield asyncpg_dsn(url)


@pytest_asyncio.fixture
async def dsn(audit_db: str) -> str:
    """The test database with an empty audit_log (and usage rollup)."""
    conn = await asyncpg.connect(audit_db)
    try:
        await conn.execute("TRUNCATE llm.audit_log, llm.usage_daily")
    finally:
        await conn.close()
    return audit_db


@pytest.fixture
def server(postgres_server: LocalPostgres | None) -> LocalPostgres:
    if postgres_server is None:
        pytest.skip("stops and starts the server: needs the embedded one (DATABASE_URL is set)")
    return postgres_server


def slots(spool_dir: Path) -> list[str]:
    return sorted(p.name for p in spool_dir.iterdir())


async def stored(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("SELECT event_id, occurred_at, xmin::text::bigint AS tx FROM llm.audit_log ORDER BY id")
    finally:
        await conn.close()


async def assert_exactly_once_in_order(dsn: str, recorded: list[AuditRecord]) -> None:
    rows = await stored(dsn)
    assert len(rows) == len({r["event_id"] for r in rows}), "an event_id is stored twice"
    assert [r["event_id"] for r in rows] == [r.event_id for r in recorded], "rows lost or out of order"
    times = [r["occurred_at"] for r in rows]
    assert times == sorted(times)


async def test_rows_are_written_in_batches(dsn: str, tmp_path: Path) -> None:
    writer = AuditLog(dsn, tmp_path, **FAST)
    await writer.start()
    recorded = [make(i) for i in range(1000)]
    for rec in recorded:
        writer.record(rec)
    await until(lambda: writer.written_rows == 1000, what="1000 rows written")
    rows = await stored(dsn)
    # Rows of one batch share a transaction id: 1000 rows, batches of 100.
    assert len({r["tx"] for r in rows}) <= 12
    assert writer.spooled_rows == 0 and writer.dropped_rows == 0 and writer.queue_depth == 0
    await writer.close()
    await assert_exactly_once_in_order(dsn, recorded)


async def test_close_flushes_everything(dsn: str, tmp_path: Path) -> None:
    writer = AuditLog(dsn, tmp_path, batch_size=5000, flush_interval_s=60)
    await writer.start()
    await until(lambda: writer.connected, what="the first pass (then a minute's sleep)")
    recorded = [make(i) for i in range(1234)]
    for rec in recorded:
        writer.record(rec)
    await asyncio.sleep(0.1)
    assert writer.written_rows == 0  # nothing due yet: the flush interval is a minute
    await writer.close(timeout_s=5)
    assert writer.written_rows == 1234 and writer.queue_depth == 0 and writer.spool_bytes == 0
    await assert_exactly_once_in_order(dsn, recorded)
    writer.record(make())  # after close: counted as dropped, never raised
    assert writer.dropped_rows == 1


async def test_outage_during_load_loses_nothing_and_duplicates_nothing(
    dsn: str, server: LocalPostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """THE durability test: PostgreSQL crashes in the middle of a steady load and comes back."""
    n = 3000
    writer = AuditLog(dsn, tmp_path, **FAST)
    await writer.start()
    recorded: list[AuditRecord] = []

    async def load() -> None:  # about 1,000 records a second
        for i in range(n):
            rec = make(i)
            recorded.append(rec)
            writer.record(rec)
            if i % 10 == 9:
                await asyncio.sleep(0.01)

    async def outage() -> None:
        await until(lambda: len(recorded) >= n // 4, what="a quarter of the load")
        await asyncio.to_thread(server.stop, mode="immediate")
        await until(lambda: writer.spooled_rows > 0, what="rows spooled while the server is down")
        await until(lambda: len(recorded) >= n * 6 // 10, what="60% of the load")
        await asyncio.to_thread(server.start)

    try:
        await asyncio.gather(load(), outage())
    finally:
        await asyncio.to_thread(server.start)  # no-op when it runs; other tests need it
    # The live writer reconnects and replays the spool by itself, before any close().
    await until(lambda: writer.replayed_rows > 0 and writer.spool_bytes == 0, what="the spool replayed")
    await writer.close(timeout_s=10)

    assert writer.dropped_rows == 0 and writer.queue_depth == 0
    assert writer.replayed_rows >= writer.spooled_rows > 0
    await assert_exactly_once_in_order(dsn, recorded)
    assert server.password not in caplog.text


async def test_first_connection_fails_then_everything_arrives(dsn: str, server: LocalPostgres, tmp_path: Path) -> None:
    await asyncio.to_thread(server.stop)
    try:
        writer = AuditLog(dsn, tmp_path, **FAST)
        await writer.start()
        recorded = [make(i) for i in range(500)]
        for rec in recorded:
            writer.record(rec)
        await until(lambda: writer.spooled_rows == 500, what="all rows spooled while the server is down")
    finally:
        await asyncio.to_thread(server.start)
    await until(lambda: writer.written_rows == 500, what="the spool replayed")
    await writer.close()
    await assert_exactly_once_in_order(dsn, recorded)


async def test_slow_database_times_out_to_the_spool(dsn: str, tmp_path: Path) -> None:
    """A write stuck behind a lock gives up after write_timeout_s; the rows arrive once it is released."""
    writer = AuditLog(dsn, tmp_path, **{**FAST, "write_timeout_s": 0.3})
    await writer.start()
    recorded = [make(i) for i in range(600)]
    writer.record(recorded[0])
    await until(lambda: writer.written_rows == 1, what="the writer connected")
    blocker = await asyncpg.connect(dsn)
    try:
        locked = blocker.transaction()
        await locked.start()
        await blocker.execute("LOCK TABLE llm.audit_log IN ACCESS EXCLUSIVE MODE")
        for rec in recorded[1:300]:
            writer.record(rec)
        await until(lambda: writer.spooled_rows > 0, what="a timed-out batch spooled")
        assert not writer.connected
        for rec in recorded[300:]:
            writer.record(rec)
        await locked.rollback()
    finally:
        await blocker.close()
    await until(lambda: writer.written_rows == 600, what="all rows written after the lock is gone")
    await writer.close()
    await assert_exactly_once_in_order(dsn, recorded)


async def test_replaying_rows_already_stored_inserts_nothing_twice(dsn: str, tmp_path: Path) -> None:
    """A batch whose commit succeeded but whose answer was lost is spooled anyway, then replayed."""
    recorded = [make(i) for i in range(400)]
    writer = AuditLog(dsn, tmp_path / "live", **FAST)
    await writer.start()
    for rec in recorded:
        writer.record(rec)
    await writer.close()
    spool = Spool(tmp_path / "again" / "0", max_bytes=10_000_000)
    extra = make(400)
    spool.append([*recorded[200:], extra])
    spool.close()

    replayer = AuditLog(dsn, tmp_path / "again", **FAST)
    await replayer.start()
    await replayer.close()
    assert replayer.replayed_rows == 201 and replayer.written_rows == 1
    await assert_exactly_once_in_order(dsn, [*recorded, extra])


async def test_rows_spooled_by_a_previous_run_are_replayed_first(dsn: str, tmp_path: Path) -> None:
    earlier = AuditLog(None, tmp_path, **FAST)  # no database at all: everything goes to the spool
    await earlier.start()
    first = [make(i) for i in range(300)]
    for rec in first:
        earlier.record(rec)
    await earlier.close()
    assert earlier.spooled_rows == 300 and earlier.written_rows == 0

    later = AuditLog(dsn, tmp_path, **FAST)
    await later.start()
    second = [make(i) for i in range(200)]
    for rec in second:
        later.record(rec)
    await later.close()
    assert later.replayed_rows == 300 and later.spool_bytes == 0
    await assert_exactly_once_in_order(dsn, first + second)


async def test_two_live_writers_get_separate_spool_slots(dsn: str, tmp_path: Path) -> None:
    one, two = AuditLog(None, tmp_path), AuditLog(None, tmp_path)
    await one.start()
    await two.start()
    one.record(make(1))
    two.record(make(2))
    await one.close()
    await two.close()
    assert slots(tmp_path) == ["0", "1"]

    # A later writer claims slot 0 and adopts slot 1, whose writer is gone.
    writer = AuditLog(dsn, tmp_path)
    await writer.start()
    await writer.close()
    assert writer.replayed_rows == 2 and len(await stored(dsn)) == 2


async def test_invalid_rows_are_dropped_and_the_rest_of_their_batch_written(dsn: str, tmp_path: Path) -> None:
    writer = AuditLog(dsn, tmp_path, **FAST)
    await writer.start()
    good = [make(i) for i in range(30)]
    for rec in good[:10]:
        writer.record(rec)
    writer.record(make(kind="bogus"))  # violates the table's CHECK (rejected by PostgreSQL)
    for rec in good[10:20]:
        writer.record(rec)
    writer.record(make(status=70_000))  # out of smallint range (rejected by the driver's COPY)
    for rec in good[20:]:
        writer.record(rec)
    await writer.close()
    assert writer.dropped_rows == 2 and writer.written_rows == 30
    await assert_exactly_once_in_order(dsn, good)


async def test_long_strings_are_cut_to_their_column(dsn: str, tmp_path: Path) -> None:
    writer = AuditLog(dsn, tmp_path, **FAST)
    await writer.start()
    writer.record(make(request_id="r" * 1000, endpoint="/" + "e" * 500, client_addr="c" * 100))
    await writer.close()
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT request_id, endpoint, client_addr FROM llm.audit_log")
    finally:
        await conn.close()
    assert row is not None and writer.dropped_rows == 0
    assert (len(row["request_id"]), len(row["endpoint"]), len(row["client_addr"])) == (128, 128, 64)


async def test_a_nul_character_is_marked_not_a_reason_to_drop_the_row(dsn: str, tmp_path: Path) -> None:
    writer = AuditLog(dsn, tmp_path, **FAST)
    await writer.start()
    writer.record(make(endpoint="/v1/\x00x", model="m\x00", target="t\x00"))
    await writer.close()
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT endpoint, model, target FROM llm.audit_log")
    finally:
        await conn.close()
    assert writer.dropped_rows == 0 and row is not None
    assert (row["endpoint"], row["model"], row["target"]) == ("/v1/\ufffdx", "m\ufffd", "t\ufffd")


async def test_purge_deletes_old_rows_in_batches(dsn: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    writer = AuditLog(dsn, tmp_path, batch_size=5000)
    await writer.start()
    for i in range(2500):
        writer.record(make(i, occurred_at=now - timedelta(days=40, minutes=i)))
    recent = [make(i, occurred_at=now - timedelta(days=29)) for i in range(100)]
    for rec in recent:
        writer.record(rec)
    await writer.close()

    assert await purge_older_than(dsn, 30, batch_rows=1000) == 2500
    assert {r["event_id"] for r in await stored(dsn)} == {r.event_id for r in recent}
    assert await purge_older_than(dsn, 30, batch_rows=1000) == 0
