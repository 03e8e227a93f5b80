"""Audit log benchmark: the writer's rows per second, and the admin queries on a million-row audit_log.

Run from the repo root: `python -m bench.audit [--writer-rows N] [--rows N] [--runs N] [--skip-candidates]`.
It starts its own PostgreSQL (services.postgres.LocalPostgres) in a temporary folder and migrates it.
  inserts   one batch strategy against another on raw asyncpg: executemany, COPY into a temporary table
            + INSERT ... SELECT ... ON CONFLICT, and INSERT ... SELECT FROM unnest(arrays)
  writer    N records through AuditLog (the cost of record(), and rows/s until all are in audit_log);
            the outage path: N records into the spool with no database, then replayed from it
  queries   audit_log filled to --rows rows (30 days, skewed keys and models), VACUUM ANALYZE, then the
            admin queries exactly as the API runs them (gateway/store/audit_queries.py), --runs times each
            with varied keys, models, statuses and windows; p50/p95 against the 100 ms goal, and the plan of
            the slowest run of a query over the goal. Then the same with custom plans, then with covering
            indexes, then usage from a daily rollup table: candidates measured on this throwaway database
            only (the schema belongs to the models and the migration).
Prints a table and writes bench/results/audit-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from gateway.audit.record import COLUMNS, AuditRecord
from gateway.audit.writer import CREATE_STAGING, MERGE, STAGING, AuditLog
from gateway.store.audit_queries import search_audit, usage
from gateway.store.db import create_engine
from gateway.store.migrate import migrate
from services.postgres import LocalPostgres

ROOT = Path(__file__).resolve().parent.parent
GOAL_MS = 100.0
MODELS = ["phi3", "openchat", "hermes", "mixtral", "embed"]
MODEL_WEIGHTS = [40, 25, 20, 10, 5]
STATUSES = [200, 400, 401, 429, 500, 502, 504]
STATUS_WEIGHTS = [920, 20, 10, 30, 10, 5, 5]
WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}
N_KEYS = 200
# Usage sums read from an index alone (index-only scans, no heap visits); each replaces a migration index
# with the same key columns.
CANDIDATE_INDEXES = {
    "ix_audit_log_key_time": (
        "CREATE INDEX ix_audit_log_key_usage ON llm.audit_log (key_id, occurred_at) "
        "INCLUDE (kind, model, prompt_tokens, completion_tokens)"
    ),
    "ix_audit_log_occurred_at": (
        "CREATE INDEX ix_audit_log_time_usage ON llm.audit_log (occurred_at) "
        "INCLUDE (kind, key_id, model, prompt_tokens, completion_tokens)"
    ),
}


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {"p50_ms": pick(0.5), "p95_ms": pick(0.95), "max_ms": ordered[-1], "mean_ms": statistics.fmean(ordered)}


def api_record(keys: list[uuid.UUID], i: int) -> AuditRecord:
    return AuditRecord(
        kind="api",
        method="POST",
        endpoint="/v1/chat/completions",
        status=200,
        latency_ms=12.5,
        ttft_ms=3.1,
        request_id=uuid.uuid4().hex,
        key_id=keys[i % len(keys)],
        role="user",
        model=MODELS[i % len(MODELS)],
        prompt_tokens=120,
        completion_tokens=256,
        client_addr="10.1.2.3",
    )


# ---- insert strategies --------------------------------------------------------------------------------

_TYPES = {
    "event_id": "uuid",
    "occurred_at": "timestamptz",
    "key_id": "uuid",
    "status": "int2",
    "latency_ms": "float8",
    "ttft_ms": "float8",
    "prompt_tokens": "int4",
    "completion_tokens": "int4",
    "cache_hit": "bool",
}
_COLS = ", ".join(COLUMNS)


async def insert_strategies(dsn: str, rows: int, batch: int) -> dict[str, float]:
    """rows/s of each way to insert a batch idempotently, on one connection, new rows then a full replay."""
    keys = [uuid.uuid4() for _ in range(50)]
    placeholders = ", ".join(f"${i + 1}" for i in range(len(COLUMNS)))
    insert = f"INSERT INTO llm.audit_log ({_COLS}) VALUES ({placeholders}) ON CONFLICT (event_id) DO NOTHING"
    arrays = ", ".join(f"${i + 1}::{_TYPES.get(c, 'text')}[]" for i, c in enumerate(COLUMNS))
    unnest = f"INSERT INTO llm.audit_log ({_COLS}) SELECT * FROM unnest({arrays}) ON CONFLICT (event_id) DO NOTHING"
    conn = await asyncpg.connect(dsn)
    await conn.execute(CREATE_STAGING)  # the writer's own statements

    async def executemany(part: list[tuple[Any, ...]]) -> None:
        async with conn.transaction():
            await conn.executemany(insert, part)

    async def copy(part: list[tuple[Any, ...]]) -> None:
        async with conn.transaction():
            await conn.copy_records_to_table(STAGING, records=part, columns=COLUMNS)
            await conn.execute(MERGE)

    async def unnest_arrays(part: list[tuple[Any, ...]]) -> None:
        await conn.execute(unnest, *[list(col) for col in zip(*part, strict=True)])

    results: dict[str, float] = {}
    strategies: dict[str, Callable[[list[tuple[Any, ...]]], Awaitable[None]]] = {
        "executemany": executemany,
        "copy_temp_insert_select": copy,
        "unnest": unnest_arrays,
    }
    try:
        for name, write in strategies.items():
            data = [api_record(keys, i).values() for i in range(rows)]
            for phase in ("new", "replay"):
                started = time.perf_counter()
                for start in range(0, rows, batch):
                    await write(data[start : start + batch])
                results[f"{name}_{phase}_rows_per_s"] = rows / (time.perf_counter() - started)
            progress(f"inserts  {name:24} batch {batch}: {results[f'{name}_new_rows_per_s']:9,.0f} rows/s")
        await conn.execute("TRUNCATE llm.audit_log")
    finally:
        await conn.close()
    return results


# ---- the writer ---------------------------------------------------------------------------------------


async def until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the audit writer did not finish in time")
        await asyncio.sleep(0.005)


async def produce(writer: AuditLog, keys: list[uuid.UUID], rows: int) -> tuple[float, float]:
    """Record rows in chunks of 1,000 (yielding to the loop between chunks, as requests would).

    Returns the seconds spent making AuditRecords and inside record().
    """
    make_s = record_s = 0.0
    for start in range(0, rows, 1000):
        t0 = time.perf_counter()
        chunk = [api_record(keys, i) for i in range(start, min(rows, start + 1000))]
        t1 = time.perf_counter()
        for rec in chunk:
            writer.record(rec)
        t2 = time.perf_counter()
        make_s, record_s = make_s + t1 - t0, record_s + t2 - t1
        await asyncio.sleep(0)
    return make_s, record_s


async def writer_throughput(dsn: str, rows: int, workdir: Path) -> dict[str, float]:
    keys = [uuid.uuid4() for _ in range(N_KEYS)]
    out: dict[str, float] = {"rows": rows}

    # The normal path: a queue large enough that nothing spills, so this is PostgreSQL's pace.
    writer = AuditLog(dsn, workdir / "spool-live", queue_max=rows)
    await writer.start()
    started = time.perf_counter()
    make_s, record_s = await produce(writer, keys, rows)
    await until(lambda: writer.written_rows >= rows, 600)
    elapsed = time.perf_counter() - started
    await writer.close()
    out |= {
        "record_us": record_s / rows * 1e6,
        "make_record_us": make_s / rows * 1e6,
        "end_to_end_rows_per_s": rows / elapsed,
        "spooled_rows": writer.spooled_rows,
        "dropped_rows": writer.dropped_rows,
    }
    progress(f"writer   live: {rows:,} rows in {elapsed:.1f}s = {rows / elapsed:,.0f} rows/s")

    # The outage path: no database, everything to the spool; then another writer replays it.
    offline = AuditLog(None, workdir / "spool-outage", queue_max=rows)
    await offline.start()
    started = time.perf_counter()
    await produce(offline, keys, rows)
    await offline.close(timeout_s=300)
    spool_s = time.perf_counter() - started
    replayer = AuditLog(dsn, workdir / "spool-outage")
    started = time.perf_counter()
    await replayer.start()
    await until(lambda: replayer.replayed_rows >= rows and replayer.spool_bytes == 0, 600)
    replay_s = time.perf_counter() - started
    await replayer.close()
    out |= {"spool_rows_per_s": rows / spool_s, "replay_rows_per_s": rows / replay_s}
    progress(f"writer   outage: spooled at {rows / spool_s:,.0f} rows/s, replayed at {rows / replay_s:,.0f} rows/s")
    return out


# ---- a million rows -----------------------------------------------------------------------------------

FILL_SQL = f"""
WITH params AS (SELECT $3::uuid[] AS keys, $4::timestamptz AS t0, $5::float8 AS step_s)
INSERT INTO llm.audit_log ({_COLS})
SELECT gen_random_uuid(),
       t0 + make_interval(secs => g * step_s + random() * 5),
       CASE WHEN r.k < 0.01 THEN 'admin' ELSE 'api' END,
       md5(g::text),
       keys[1 + floor({N_KEYS} * power(random(), 2))::int],
       'user',
       CASE WHEN r.k < 0.01 THEN 'DELETE' ELSE 'POST' END,
       CASE WHEN r.k < 0.01 THEN '/admin/keys/{{key_id}}' ELSE '/v1/chat/completions' END,
       CASE WHEN r.m < 0.40 THEN 'phi3' WHEN r.m < 0.65 THEN 'openchat' WHEN r.m < 0.85 THEN 'hermes'
            WHEN r.m < 0.95 THEN 'mixtral' ELSE 'embed' END,
       CASE WHEN r.s < 0.920 THEN 200 WHEN r.s < 0.940 THEN 400 WHEN r.s < 0.950 THEN 401
            WHEN r.s < 0.980 THEN 429 WHEN r.s < 0.990 THEN 500 WHEN r.s < 0.995 THEN 502 ELSE 504 END,
       20 + random() * 2000,
       5 + random() * 200,
       (10 + random() * 2000)::int,
       (random() * 1000)::int,
       random() < 0.1,
       NULL,
       '10.0.' || (g % 250) || '.' || (g % 200),
       NULL,
       NULL
FROM params, generate_series($1::bigint, $2::bigint) AS g,
     LATERAL (SELECT random() + g * 0 AS k, random() + g * 0 AS m, random() + g * 0 AS s) AS r
"""


async def fill(dsn: str, rows: int, keys: list[uuid.UUID], now: datetime) -> float:
    """audit_log with `rows` rows over the last 30 days, ids in time order; returns seconds."""
    t0 = now - WINDOWS["30d"]
    step_s = WINDOWS["30d"].total_seconds() / rows
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        await conn.execute("TRUNCATE llm.audit_log")
        chunk = 100_000
        for first in range(0, rows, chunk):
            last = min(rows, first + chunk) - 1
            await conn.execute(FILL_SQL, first, last, keys, t0, step_s)
            progress(f"fill     {last + 1:>9,} / {rows:,} rows ({time.perf_counter() - started:.0f}s)")
        progress("fill     VACUUM ANALYZE")
        await conn.execute("VACUUM (ANALYZE) llm.audit_log")
    finally:
        await conn.close()
    return time.perf_counter() - started


# ---- the admin queries --------------------------------------------------------------------------------


class Recorder:
    """Remembers the last SQL statement the engine sent, so a slow one can be EXPLAINed as it ran."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.last: tuple[str, Any] = ("", ())
        event.listen(engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        self.last = (statement, parameters)


def force_custom_plans(engine: AsyncEngine) -> None:
    """Plan every execution with its parameters, instead of the generic plan PostgreSQL adopts for a
    prepared statement after five runs (SQLAlchemy's asyncpg driver prepares and reuses each statement)."""

    def on_connect(dbapi_conn: Any, record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("SET plan_cache_mode = force_custom_plan")
        cursor.close()
        dbapi_conn.commit()  # the driver opened a transaction: a rollback would undo the SET

    event.listen(engine.sync_engine, "connect", on_connect)


def pick_key(rng: random.Random, keys: list[uuid.UUID]) -> uuid.UUID:
    """Heavy, middling and rare keys alike (the fill gives the first keys most of the traffic)."""
    return keys[rng.choice([0, 1, 2, rng.randrange(3, 20), rng.randrange(20, N_KEYS), rng.randrange(N_KEYS)])]


def window(rng: random.Random, now: datetime, names: list[str]) -> tuple[str, datetime, datetime]:
    name = rng.choice(names)
    until = now - timedelta(seconds=rng.uniform(0, 3600)) if name != "30d" else now
    return name, until - WINDOWS[name], until


QueryFn = Callable[[Any, random.Random], Awaitable[tuple[str, int]]]


def query_cases(keys: list[uuid.UUID], now: datetime) -> dict[str, QueryFn]:
    """Each case runs one admin query with random parameters; returns (parameter label, rows)."""

    async def by_key(session: Any, rng: random.Random) -> tuple[str, int]:
        name, since, until = window(rng, now, list(WINDOWS))
        rows, _ = await search_audit(session=session, since=since, until=until, limit=50, key_id=pick_key(rng, keys))
        return name, len(rows)

    async def by_key_page2(session: Any, rng: random.Random) -> tuple[str, int]:
        name, since, until = window(rng, now, list(WINDOWS))
        key = pick_key(rng, keys)
        rows, _ = await search_audit(session=session, since=since, until=until, limit=50, key_id=key)
        before = rows[-1].id if rows else None
        rows, _ = await search_audit(session=session, since=since, until=until, limit=50, key_id=key, before_id=before)
        return name, len(rows)

    async def by_model_status(session: Any, rng: random.Random) -> tuple[str, int]:
        name, since, until = window(rng, now, list(WINDOWS))
        model = rng.choices(MODELS, MODEL_WEIGHTS)[0]
        status = rng.choice(STATUSES)  # rare statuses as often as 200: the hard case for a LIMIT
        rows, _ = await search_audit(session=session, since=since, until=until, limit=50, model=model, status=status)
        return f"{name} {status}", len(rows)

    async def usage_all(session: Any, rng: random.Random) -> tuple[str, int]:
        name, since, until = window(rng, now, ["24h", "7d", "30d"])
        return name, len(await usage(session=session, since=since, until=until))

    async def usage_one_key(session: Any, rng: random.Random) -> tuple[str, int]:
        name, since, until = window(rng, now, ["24h", "7d", "30d"])
        return name, len(await usage(session=session, since=since, until=until, key_id=pick_key(rng, keys)))

    return {
        "audit by key, page 1": by_key,
        "audit by key, page 2 (keyset)": by_key_page2,
        "audit by model+status": by_model_status,
        "usage per key+model (all keys)": usage_all,
        "usage per model (one key)": usage_one_key,
    }


async def run_queries(
    url: str, cases: dict[str, QueryFn], *, runs: int, seed: int, custom_plans: bool
) -> dict[str, Any]:
    engine = create_engine(url, pool_size=2)
    if custom_plans:
        force_custom_plans(engine)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    recorder = Recorder(engine)
    results: dict[str, Any] = {}
    try:
        for name, case in cases.items():
            rng = random.Random(f"{seed}-{name}")
            async with sessions() as session:
                await case(session, rng)  # warm the connection
            samples: list[tuple[float, str, int, tuple[str, Any]]] = []
            for _ in range(runs):
                async with sessions() as session:
                    started = time.perf_counter()
                    label, count = await case(session, rng)
                    elapsed_ms = (time.perf_counter() - started) * 1000
                samples.append((elapsed_ms, label, count, recorder.last))
            results[name] = summarize(samples)
            if not results[name]["meets_goal"]:
                slowest = max(samples, key=lambda s: s[0])
                results[name]["slowest"]["plan"] = await explain(engine, *slowest[3], generic=not custom_plans)
            stats = results[name]
            progress(f"query    {name:40} p50 {stats['p50_ms']:7.1f} ms  p95 {stats['p95_ms']:7.1f} ms")
    finally:
        await engine.dispose()
    return results


def summarize(samples: list[tuple[float, str, int, Any]]) -> dict[str, Any]:
    stats = percentiles([s[0] for s in samples])
    slowest = max(samples, key=lambda s: s[0])
    by_window: dict[str, list[float]] = {}
    for ms, label, _, _ in samples:
        by_window.setdefault(label.split()[0], []).append(ms)
    return {
        **stats,
        "runs": len(samples),
        "meets_goal": stats["p95_ms"] < GOAL_MS,
        "slowest": {"ms": slowest[0], "params": slowest[1], "rows": slowest[2]},
        "p95_ms_by_window": {k: percentiles(v)["p95_ms"] for k, v in sorted(by_window.items())},
    }


async def explain(engine: AsyncEngine, statement: str, parameters: Any, *, generic: bool) -> list[str]:
    """The plan of a slow run: the generic plan when statements were reused (what such a run most likely got)."""
    async with engine.connect() as conn:
        if generic:
            await conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        result = await conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
        lines = [row[0] for row in result]
        await conn.rollback()
    return (["(generic plan)"] if generic else []) + lines


async def add_indexes(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for replaced, ddl in CANDIDATE_INDEXES.items():
            started = time.perf_counter()
            await conn.execute(ddl)
            await conn.execute(f"DROP INDEX llm.{replaced}")
            progress(f"index    {ddl.split()[2]} (instead of {replaced}) built in {time.perf_counter() - started:.1f}s")
        await conn.execute("VACUUM (ANALYZE) llm.audit_log")
    finally:
        await conn.close()


# A prototype only, for the usage query no index makes fast over 30 days: requests and tokens per UTC day,
# key and model. A window sums its whole days here and reads raw rows only for its two partial days.
ROLLUP_DDL = [
    """CREATE TABLE llm.bench_usage_daily (
        day date NOT NULL, key_id uuid, model varchar(256),
        requests bigint NOT NULL, prompt_tokens bigint NOT NULL, completion_tokens bigint NOT NULL,
        UNIQUE NULLS NOT DISTINCT (day, key_id, model))""",
    """INSERT INTO llm.bench_usage_daily
       SELECT (occurred_at AT TIME ZONE 'UTC')::date, key_id, model,
              count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0)
       FROM llm.audit_log WHERE kind = 'api' GROUP BY 1, 2, 3""",
    "ANALYZE llm.bench_usage_daily",
]
ROLLUP_QUERY = """
WITH parts AS (
    SELECT key_id, model, requests AS n, prompt_tokens AS p, completion_tokens AS c
    FROM llm.bench_usage_daily WHERE day >= $1 AND day < $2
    UNION ALL
    SELECT key_id, model, 1, prompt_tokens, completion_tokens FROM llm.audit_log
    WHERE kind = 'api' AND ((occurred_at >= $3 AND occurred_at < $4) OR (occurred_at >= $5 AND occurred_at < $6))
)
SELECT key_id, model, sum(n), coalesce(sum(p), 0), coalesce(sum(c), 0) FROM parts GROUP BY 1, 2 ORDER BY 1, 2
"""


def rollup_args(since: datetime, until: datetime) -> tuple[Any, ...]:
    first = (since + timedelta(days=1) - timedelta(microseconds=1)).date()  # the first whole day
    last = until.date()  # the day after the last whole one
    if first >= last:  # no whole day: raw rows only
        return first, first, since, until, until, until
    start, end = (datetime.combine(d, datetime.min.time(), UTC) for d in (first, last))
    return first, last, since, start, end, until


async def run_rollup(dsn: str, now: datetime, runs: int, seed: int) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        for ddl in ROLLUP_DDL:
            await conn.execute(ddl)
        progress(f"rollup   llm.bench_usage_daily built in {time.perf_counter() - started:.1f}s")
        rng = random.Random(f"{seed}-rollup")
        samples: list[tuple[float, str, int, Any]] = []
        for _ in range(runs):
            name, since, until = window(rng, now, ["24h", "7d", "30d"])
            t0 = time.perf_counter()
            rows = await conn.fetch(ROLLUP_QUERY, *rollup_args(since, until))
            samples.append(((time.perf_counter() - t0) * 1000, name, len(rows), None))
        # The rollup must give the same answer as the raw table.
        since, until = now - WINDOWS["30d"] + timedelta(hours=5), now - timedelta(hours=2)
        raw = await conn.fetch(
            "SELECT key_id, model, count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0) "
            "FROM llm.audit_log WHERE kind = 'api' AND occurred_at >= $1 AND occurred_at < $2 "
            "GROUP BY 1, 2 ORDER BY 1, 2",
            since,
            until,
        )
        rolled = await conn.fetch(ROLLUP_QUERY, *rollup_args(since, until))
        assert [tuple(r) for r in raw] == [tuple(r) for r in rolled], "the rollup disagrees with audit_log"
    finally:
        await conn.close()
    result = summarize(samples)
    name = "usage per key+model, daily rollup"
    progress(f"query    {name:40} p50 {result['p50_ms']:7.1f} ms  p95 {result['p95_ms']:7.1f} ms")
    return {"usage per key+model (all keys)": result}


# ---- report -------------------------------------------------------------------------------------------


QUERY_SETS = {
    "queries": "as the API runs them (SQLAlchemy prepares and reuses each statement)",
    "queries_custom_plans": "with plan_cache_mode = force_custom_plan",
    "queries_custom_plans_indexes": "with custom plans and the covering indexes",
    "queries_rollup": "from a daily rollup table (prototype), custom plans and covering indexes",
}


def print_report(report: dict[str, Any]) -> None:
    w = report["writer"]
    print("\nAudit writer")
    print(f"  record() {w['record_us']:.2f} us/call (+ {w['make_record_us']:.2f} us to make the AuditRecord)")
    print(f"  live path   {w['end_to_end_rows_per_s']:>9,.0f} rows/s  ({w['rows']:,} records through AuditLog)")
    print(f"  outage      {w['spool_rows_per_s']:>9,.0f} rows/s into the spool, {w['replay_rows_per_s']:,.0f} replayed")
    ins = report["inserts"]
    print(f"  one batch of {report['insert_batch']} rows, new / replayed (all duplicates), rows/s:")
    for strategy in ("executemany", "copy_temp_insert_select", "unnest"):
        new, replay = ins[f"{strategy}_new_rows_per_s"], ins[f"{strategy}_replay_rows_per_s"]
        print(f"    {strategy:26} {new:>9,.0f} / {replay:>9,.0f}")
    print(f"\nAdmin queries on {report['rows']:,} rows, {report['runs']} runs each, goal p95 < {GOAL_MS:.0f} ms")
    for key, title in QUERY_SETS.items():
        if key not in report:
            continue
        print(f"  {title}")
        print(f"    {'query':34} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  goal  p95 ms by window")
        for name, r in report[key].items():
            windows = ", ".join(f"{k} {v:.0f}" for k, v in r["p95_ms_by_window"].items())
            ok = "ok  " if r["meets_goal"] else "MISS"
            print(f"    {name:34} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} {r['max_ms']:8.1f}  {ok}  {windows}")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="citadel-audit-bench-") as tmp:
        workdir = Path(tmp)
        pg = LocalPostgres(workdir / "pgdata", free_port(), password=secrets.token_urlsafe(16))
        progress("postgres starting (initdb on first use)")
        await asyncio.to_thread(pg.start)
        try:
            await asyncio.to_thread(pg.ensure_database)
            await migrate(pg.url, echo=lambda line: progress(f"migrate  {line}"))
            report: dict[str, Any] = {
                "benchmark": "audit",
                "started_at": datetime.now(UTC).isoformat(),
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                "rows": args.rows,
                "runs": args.runs,
                "insert_batch": 500,
            }
            report["inserts"] = await insert_strategies(pg.dsn, args.insert_rows, 500)
            report["writer"] = await writer_throughput(pg.dsn, args.writer_rows, workdir)
            keys = [uuid.UUID(int=random.Random(i).getrandbits(128)) for i in range(N_KEYS)]
            now = datetime.now(UTC)
            report["fill_s"] = await fill(pg.dsn, args.rows, keys, now)
            cases = query_cases(keys, now)
            opts = {"runs": args.runs, "seed": args.seed}
            report["queries"] = await run_queries(pg.url, cases, **opts, custom_plans=False)
            report["queries_custom_plans"] = await run_queries(pg.url, cases, **opts, custom_plans=True)
            if not args.skip_candidates:
                await add_indexes(pg.dsn)
                report["candidate_indexes"] = CANDIDATE_INDEXES
                report["queries_custom_plans_indexes"] = await run_queries(pg.url, cases, **opts, custom_plans=True)
                report["queries_rollup"] = await run_rollup(pg.dsn, now, **opts)
        finally:
            await asyncio.to_thread(pg.stop)
    report["elapsed_s"] = time.perf_counter() - started
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.audit", description=__doc__.split("\n")[0])
    parser.add_argument("--writer-rows", type=int, default=200_000)
    parser.add_argument("--insert-rows", type=int, default=20_000, help="rows per insert strategy")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in audit_log for the queries")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--skip-candidates", action="store_true", help="skip the runs with candidate indexes and the rollup"
    )
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    print_report(report)
    out = ROOT / "bench" / "results" / f"audit-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out.relative_to(ROOT)} ({report['elapsed_s']:.0f}s)")


if __name__ == "__main__":
    main()
