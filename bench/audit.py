"""Audit log benchmark: the writer's rows per second, and the admin queries on a million-row audit_log.

Run from the repo root: `python -m bench.audit [--writer-rows N] [--rows N] [--runs N]`.
It starts its own PostgreSQL (services.postgres.LocalPostgres) in a temporary folder and migrates it, so it
measures the schema, the settings (gateway/store/db.py) and the code as they are:
  writer    N records through AuditLog (the cost of record(), and rows/s until all are in audit_log, with
            the daily usage rollup kept in the same statement); the outage path: N records into the spool
            with no database, then replayed from it
  queries   audit_log filled to --rows rows (30 days, skewed keys and models) and usage_daily summed from
            it (as migration 0002 backfills it), VACUUM ANALYZE, then the admin queries exactly as the API
            runs them (gateway/store/audit_queries.py on gateway.store.db.create_engine), --runs times each
            with varied keys, models, statuses and windows; p50/p95 against the 100 ms goal, and the plan of
            the slowest run of a query over the goal. usage() is checked against a GROUP BY over audit_log.
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
from gateway.audit.writer import AuditLog
from gateway.store.audit_queries import search_audit, usage
from gateway.store.db import create_engine
from gateway.store.migrate import migrate
from gateway.store.models import NO_KEY, NO_MODEL
from services.postgres import LocalPostgres
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
GOAL_MS = 100.0
MODELS = ["phi3", "openchat", "hermes", "mixtral", "embed"]
MODEL_WEIGHTS = [40, 25, 20, 10, 5]
STATUSES = [200, 400, 401, 429, 500, 502, 504]
STATUS_WEIGHTS = [920, 20, 10, 30, 10, 5, 5]
WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}
N_KEYS = 200


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


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


_COLS = ", ".join(COLUMNS)


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

# The same sums as migrations/versions/0002_usage_daily.py's backfill (and as the writer keeps them).
FILL_ROLLUP_SQL = f"""
INSERT INTO llm.usage_daily (day, key_id, model, requests, prompt_tokens, completion_tokens)
SELECT (occurred_at AT TIME ZONE 'UTC')::date, COALESCE(key_id, '{NO_KEY}'::uuid), COALESCE(model, '{NO_MODEL}'),
       count(*), COALESCE(sum(prompt_tokens), 0), COALESCE(sum(completion_tokens), 0)
FROM llm.audit_log WHERE kind = 'api' GROUP BY 1, 2, 3
"""


async def fill(dsn: str, rows: int, keys: list[uuid.UUID], now: datetime) -> float:
    """audit_log with `rows` rows over the last 30 days, ids in time order, and their usage_daily sums
    (what the writer would have made of them); returns seconds."""
    t0 = now - WINDOWS["30d"]
    step_s = WINDOWS["30d"].total_seconds() / rows
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        await conn.execute("TRUNCATE llm.audit_log, llm.usage_daily")
        chunk = 100_000
        for first in range(0, rows, chunk):
            last = min(rows, first + chunk) - 1
            await conn.execute(FILL_SQL, first, last, keys, t0, step_s)
            progress(f"fill     {last + 1:>9,} / {rows:,} rows ({time.perf_counter() - started:.0f}s)")
        await conn.execute(FILL_ROLLUP_SQL)
        progress(f"fill     usage_daily summed from audit_log ({time.perf_counter() - started:.0f}s)")
        progress("fill     VACUUM ANALYZE")
        await conn.execute("VACUUM (ANALYZE) llm.audit_log")
        await conn.execute("VACUUM (ANALYZE) llm.usage_daily")
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

    def usage_all(name: str) -> QueryFn:
        async def case(session: Any, rng: random.Random) -> tuple[str, int]:
            name_, since, until = window(rng, now, [name])
            return name_, len(await usage(session=session, since=since, until=until))

        return case

    async def usage_one_key(session: Any, rng: random.Random) -> tuple[str, int]:
        name, since, until = window(rng, now, ["24h", "7d", "30d"])
        return name, len(await usage(session=session, since=since, until=until, key_id=pick_key(rng, keys)))

    return {
        "audit by key, page 1": by_key,
        "audit by key, page 2 (keyset)": by_key_page2,
        "audit by model+status": by_model_status,
        "usage, all keys, 24h": usage_all("24h"),
        "usage, all keys, 7d": usage_all("7d"),
        "usage, all keys, 30d": usage_all("30d"),
        "usage per model (one key)": usage_one_key,
    }


async def run_queries(url: str, cases: dict[str, QueryFn], *, runs: int, seed: int) -> dict[str, Any]:
    """Each case `runs` times on the gateway's engine (create_engine: its settings, plan_cache_mode included)."""
    engine = create_engine(url, pool_size=2)
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
                results[name]["slowest"]["plan"] = await explain(engine, *slowest[3])
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


async def explain(engine: AsyncEngine, statement: str, parameters: Any) -> list[str]:
    """The plan of a slow run, on a connection with the engine's settings."""
    async with engine.connect() as conn:
        result = await conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
        lines = [row[0] for row in result]
        await conn.rollback()
    return lines


RAW_USAGE = """
SELECT key_id, model, count(*), COALESCE(sum(prompt_tokens), 0), COALESCE(sum(completion_tokens), 0)
FROM llm.audit_log WHERE kind = 'api' AND occurred_at >= $1 AND occurred_at < $2
GROUP BY 1, 2 ORDER BY 1, 2
"""


async def check_usage(url: str, dsn: str, now: datetime) -> int:
    """usage() (rollup for whole days, audit_log for the rest) against a GROUP BY over audit_log alone."""
    engine = create_engine(url, pool_size=1)
    conn = await asyncpg.connect(dsn)
    checked = 0
    try:
        windows = [(now - WINDOWS[w], now) for w in ("24h", "7d", "30d")]
        windows.append((now - WINDOWS["30d"] + timedelta(hours=5), now - timedelta(hours=2)))
        windows.append((now - timedelta(days=40), now + timedelta(days=1)))
        for since, until in windows:
            async with async_sessionmaker(engine)() as session:
                got = await usage(session=session, since=since, until=until)
            want = [tuple(r) for r in await conn.fetch(RAW_USAGE, since, until)]
            assert got == want, f"usage() disagrees with audit_log over {since} .. {until}"
            checked += 1
    finally:
        await conn.close()
        await engine.dispose()
    progress(f"check    usage() equals a GROUP BY over audit_log ({checked} windows)")
    return checked


# ---- report -------------------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    w = report["writer"]
    print("\nAudit writer")
    print(f"  record() {w['record_us']:.2f} us/call (+ {w['make_record_us']:.2f} us to make the AuditRecord)")
    print(f"  live path   {w['end_to_end_rows_per_s']:>9,.0f} rows/s  ({w['rows']:,} records through AuditLog)")
    print(f"  outage      {w['spool_rows_per_s']:>9,.0f} rows/s into the spool, {w['replay_rows_per_s']:,.0f} replayed")
    print(f"\nAdmin queries on {report['rows']:,} rows, {report['runs']} runs each, goal p95 < {GOAL_MS:.0f} ms")
    print("  as the API runs them (gateway/store/audit_queries.py, the gateway's engine settings)")
    print(f"    {'query':34} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  goal  p95 ms by window")
    for name, r in report["queries"].items():
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
            }
            report["writer"] = await writer_throughput(pg.dsn, args.writer_rows, workdir)
            keys = [uuid.UUID(int=random.Random(i).getrandbits(128)) for i in range(N_KEYS)]
            now = datetime.now(UTC)
            report["fill_s"] = await fill(pg.dsn, args.rows, keys, now)
            report["usage_checked_windows"] = await check_usage(pg.url, pg.dsn, now)
            report["queries"] = await run_queries(pg.url, query_cases(keys, now), runs=args.runs, seed=args.seed)
        finally:
            await asyncio.to_thread(pg.stop)
    report["elapsed_s"] = time.perf_counter() - started
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.audit", description=__doc__.split("\n")[0])
    parser.add_argument("--writer-rows", type=int, default=200_000)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in audit_log for the queries")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    print_report(report)
    out = ROOT / "bench" / "results" / f"audit-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out.relative_to(ROOT)} ({report['elapsed_s']:.0f}s)")


if __name__ == "__main__":
    main()
