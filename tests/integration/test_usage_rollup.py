"""The daily usage rollup (llm.usage_daily) against a real PostgreSQL: kept by the audit writer (a replayed
batch counted once, the per-row fallback too), read by audit_queries.usage for whole days, filled by
migration 0002 from existing rows; usage() always equals a GROUP BY over audit_log.

A database of its own on the shared server (created and migrated here, dropped at the end).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
import pytest_asyncio
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from gateway.audit.record import AuditRecord
from gateway.audit.writer import AuditLog
from gateway.store import batch_models  # noqa: F401  (the Batch API's tables: in Base.metadata too)
from gateway.store.audit_queries import usage
from gateway.store.db import asyncpg_dsn, create_engine
from gateway.store.migrate import downgrade, migrate
from gateway.store.models import BOOTSTRAP_ADMIN_ID, NO_KEY, SCHEMA, Base
from tests.support.postgres import fresh_database

FAST: dict[str, Any] = {"batch_size": 100, "flush_interval_s": 0.05, "write_timeout_s": 2.0, "retry_max_s": 0.5}
KEY_A, KEY_B = uuid.uuid4(), uuid.uuid4()
KEYS = [KEY_A, KEY_B, BOOTSTRAP_ADMIN_ID, None]
MODELS = ["phi3", "hermes", None]
DAY0 = datetime(2026, 10, 1, tzinfo=UTC)
DAYS = 5

RAW = """
SELECT key_id, model, count(*), COALESCE(sum(prompt_tokens), 0), COALESCE(sum(completion_tokens), 0)
FROM llm.audit_log
WHERE kind = 'api' AND occurred_at >= $1 AND occurred_at < $2
  AND ($3::uuid IS NULL OR key_id = $3) AND ($4::text IS NULL OR model = $4)
GROUP BY key_id, model ORDER BY key_id, model
"""


@pytest_asyncio.fixture(scope="module")
async def rollup_url(postgres_url: str) -> AsyncIterator[str]:
    """A fresh migrated database on the shared server; yields its SQLAlchemy URL."""
    async with fresh_database(postgres_url, prefix="citadel_usage") as url:
        yield url


@pytest_asyncio.fixture
async def url(rollup_url: str) -> str:
    """The test database with empty audit_log and usage_daily."""
    conn = await asyncpg.connect(asyncpg_dsn(rollup_url))
    try:
        await conn.execute("TRUNCATE llm.audit_log, llm.usage_daily")
    finally:
        await conn.close()
    return rollup_url


@pytest_asyncio.fixture
async def engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url, pool_size=1)
    yield engine
    await engine.dispose()


def records(n: int, seed: int = 1) -> list[AuditRecord]:
    """API rows over DAYS days (some exactly at midnight or a microsecond before), a few admin rows."""
    rng = random.Random(seed)
    edges = [DAY0 + timedelta(days=d) + timedelta(microseconds=u) for d in range(1, DAYS) for u in (-1, 0)]
    out = []
    for i in range(n):
        at = edges[i] if i < len(edges) else DAY0 + timedelta(seconds=rng.uniform(0, DAYS * 86400))
        out.append(
            AuditRecord(
                kind="admin" if i % 17 == 0 else "api",
                method="POST",
                endpoint="/v1/chat/completions",
                status=200,
                latency_ms=1.0,
                key_id=rng.choice(KEYS),
                model=rng.choice(MODELS),
                prompt_tokens=rng.choice([None, rng.randint(1, 500)]),
                completion_tokens=rng.choice([None, rng.randint(1, 900)]),
                occurred_at=at,
            )
        )
    return sorted(out, key=lambda r: r.occurred_at)


async def write(url: str, spool: Path, recs: list[AuditRecord]) -> AuditLog:
    writer = AuditLog(asyncpg_dsn(url), spool, **FAST)
    await writer.start()
    for rec in recs:
        writer.record(rec)
    await writer.close()
    return writer


async def raw(url: str, since: datetime, until: datetime, key_id: Any = None, model: Any = None) -> list[Any]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await conn.fetch(RAW, since, until, key_id, model)
    finally:
        await conn.close()
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


async def rollup(url: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return [tuple(r) for r in await conn.fetch("SELECT * FROM llm.usage_daily ORDER BY day, key_id, model")]
    finally:
        await conn.close()


def d(days: float, hours: float = 0) -> datetime:
    return DAY0 + timedelta(days=days, hours=hours)


WINDOWS = [
    (d(0), d(DAYS)),  # whole days only
    (d(1), d(3)),
    (d(0, 5), d(3, 7)),  # partial days at both ends
    (d(1, 2), d(1, 9)),  # inside one day
    (d(1), d(2, 1)),  # midnight to a partial day
    (d(0, 23.5), d(2)),  # a partial day to midnight
    (d(0, 23.5), d(1, 0.5)),  # across one midnight, no whole day
    (d(-3), d(DAYS + 3)),  # wider than the data
    (d(1) - timedelta(microseconds=1), d(4) + timedelta(microseconds=1)),
    (d(2).astimezone(ZoneInfo("America/New_York")), d(4, 3)),  # not given in UTC
]
FILTERS = [(None, None), (KEY_A, None), (None, "phi3"), (KEY_B, "hermes"), (BOOTSTRAP_ADMIN_ID, None), (NO_KEY, None)]


async def assert_usage_equals_raw(engine: AsyncEngine, url: str) -> None:
    async with AsyncSession(engine) as session:
        for since, until in WINDOWS:
            for key_id, model in FILTERS:
                got = await usage(session=session, since=since, until=until, key_id=key_id, model=model)
                want = await raw(url, since, until, key_id, model)
                assert got == want, (since, until, key_id, model)


async def test_usage_from_the_rollup_equals_the_audit_log(url: str, engine: AsyncEngine, tmp_path: Path) -> None:
    recs = records(3000)
    writer = await write(url, tmp_path / "a", recs)
    assert writer.written_rows == len(recs)
    assert len(await rollup(url)) > 20
    await assert_usage_equals_raw(engine, url)
    # The whole rollup equals the GROUP BY it stands for.
    api = [r for r in recs if r.kind == "api"]
    assert sum(row[3] for row in await rollup(url)) == len(api)


async def test_a_replayed_batch_is_counted_once(url: str, engine: AsyncEngine, tmp_path: Path) -> None:
    recs = records(1000, seed=2)
    await write(url, tmp_path / "a", recs)
    before = await rollup(url)
    # The same rows again (a replay after a commit whose answer was lost), and a half-new batch.
    again = await write(url, tmp_path / "b", recs)
    assert again.written_rows == 0
    assert await rollup(url) == before
    more = records(400, seed=3)
    mixed = await write(url, tmp_path / "c", recs[:300] + more)
    assert mixed.written_rows == len(more)
    assert await rollup(url) != before
    await assert_usage_equals_raw(engine, url)


async def test_the_per_row_fallback_keeps_the_rollup(url: str, engine: AsyncEngine, tmp_path: Path) -> None:
    recs = records(500, seed=4)
    bad = AuditRecord(kind="bogus", method="POST", endpoint="/x", status=200, latency_ms=1.0)  # type: ignore[arg-type]
    batch = [*recs[:250], bad, *recs[250:]]
    writer = await write(url, tmp_path / "a", batch)
    assert writer.written_rows == len(recs) and writer.dropped_rows == 1
    await write(url, tmp_path / "b", batch)  # replayed through the fallback: nothing counted twice
    await assert_usage_equals_raw(engine, url)


async def test_migration_backfill_gives_the_same_rollup(url: str, engine: AsyncEngine, tmp_path: Path) -> None:
    await write(url, tmp_path / "a", records(2000, seed=5))
    kept = await rollup(url)
    assert await downgrade(url, "0001", echo=lambda _line: None) == "0001"
    assert await migrate(url, revision="0002", echo=lambda _line: None) == "0002"
    assert await rollup(url) == kept
    await assert_usage_equals_raw(engine, url)
    await migrate(url, echo=lambda _line: None)  # back to head for the other tests


def _differences(connection: Connection) -> list[Any]:
    opts = {
        "include_schemas": True,
        "include_name": lambda name, type_, _parents: name == SCHEMA if type_ == "schema" else True,
        "version_table_schema": SCHEMA,
        "compare_type": True,
        "compare_server_default": True,
    }
    return list(compare_metadata(MigrationContext.configure(connection, opts=opts), Base.metadata))


async def test_migrated_schema_matches_the_models(url: str, engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        assert await connection.run_sync(_differences) == []
    await downgrade(url, "0001", echo=lambda _line: None)
    async with engine.connect() as connection:
        diffs = await connection.run_sync(_differences)
    await migrate(url, echo=lambda _line: None)  # back to head first: the other tests need it, whatever the outcome
    # 0001 lacks exactly what later revisions add: the usage_daily and feedback tables, indexes (0002, 0003), the
    # per-key control limit and vector quota columns of api_keys (0004), a key's admission class and weight (0005),
    # and the Batch API's tables (0006).
    tables = {diff[1].name for diff in diffs if diff[0] == "add_table"}
    assert tables == {"usage_daily", "feedback", "files", "file_chunks", "batches", "batch_lines"}, diffs
    assert {diff[0] for diff in diffs} == {"add_table", "add_index", "add_column"}, diffs
    added = {diff[3].name for diff in diffs if diff[0] == "add_column"}
    expected = {"control_requests_per_minute", "vector_quota_collections", "vector_quota_documents"}
    assert added == expected | {"priority", "queue_weight"}, diffs


@pytest.mark.parametrize("model", ["", None])
async def test_a_filter_on_a_sentinel_reads_the_audit_log(
    url: str, engine: AsyncEngine, tmp_path: Path, model: str | None
) -> None:
    await write(url, tmp_path / "a", records(300, seed=6))
    async with AsyncSession(engine) as session:
        got = await usage(session=session, since=d(0), until=d(DAYS), key_id=NO_KEY, model=model)
        assert got == []
        got = await usage(session=session, since=d(0), until=d(DAYS), model="")
        assert got == []
