"""PostgreSQL against the 100 ms requirement: the admin API's queries timed over HTTP, and (with --database-url)
the gateway's own SELECTs timed directly on one connection."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .client import describe
from .report import Summary, Target, at_most
from .state import RunState

POSTGRES_LIMIT_MS = 100.0  # the requirement: database queries under 100 ms
ADMIN_QUERIES = {"audit": "/admin/audit?limit=50", "usage": "/admin/usage"}
DATABASE_QUERIES: dict[str, tuple[str, bool]] = {
    # name: (SQL, takes the random key hash as $1)
    "round trip": ("SELECT 1", False),
    "key lookup": ("SELECT * FROM llm.api_keys WHERE key_hash = $1", True),
    "audit page": (
        "SELECT * FROM llm.audit_log WHERE occurred_at >= now() - interval '1 day' ORDER BY id DESC LIMIT 51",
        False,
    ),
    "usage": (
        "SELECT key_id, model, count(*), sum(prompt_tokens), sum(completion_tokens) FROM llm.audit_log "
        "WHERE kind = 'api' AND occurred_at >= now() - interval '1 day' GROUP BY key_id, model",
        False,
    ),
}


async def time_admin_api(run: RunState) -> None:
    for name, path in ADMIN_QUERIES.items():
        run.progress.phase(f"PostgreSQL via GET {path}")
        target_id, title = f"postgres.admin.{name}", f"PostgreSQL: GET {path} (p95)"
        durations: list[float] = []
        errors: list[str] = []
        for index in range(run.options.requests):
            exchange = await run.client.call("GET", path)
            run.progress.advance()
            if exchange.status == 403 and index == 0:
                run.progress.advance(run.options.requests - 1)
                run.targets.append(
                    Target(
                        id=target_id,
                        area="postgres",
                        title=title,
                        status="skip",
                        reason="the key is not an admin's (403): pass an admin key to time the admin API",
                    )
                )
                break
            if exchange.ok:
                durations.append(exchange.ms)
            else:
                errors.append(describe(exchange))
        else:
            summary = Summary.of(durations, errors=len(errors))
            run.targets.append(
                at_most(
                    id=target_id,
                    area="postgres",
                    title=title,
                    value=summary.p95_ms,
                    limit=POSTGRES_LIMIT_MS,
                    unit="ms",
                    reason=(
                        f"{summary.count} requests, p50 {summary.p50_ms or 0:.1f} ms; HTTP round trip included, "
                        "so an upper bound of the query time"
                    ),
                    details={"path": path, **summary.as_dict()},
                    fail_reason=f"{len(errors)} of {run.options.requests} failed (first: {errors[0]})"
                    if errors
                    else None,
                )
            )


async def time_database(run: RunState) -> None:
    url = run.options.database_url
    if not url:
        run.targets.append(
            Target(
                id="postgres.direct",
                area="postgres",
                title="PostgreSQL: direct SELECTs",
                status="skip",
                reason="no --database-url given (the admin API timings above stand for it)",
            )
        )
        return
    run.progress.phase("PostgreSQL directly")
    run.database_queries = [f"{name}: {sql}" for name, (sql, _) in DATABASE_QUERIES.items()]
    results = await time_database_queries(url, run.options.requests, run.progress.advance)
    for name, outcome in results.items():
        target_id, title = f"postgres.direct.{name}", f"PostgreSQL: {name} (p95, direct)"
        if isinstance(outcome, str):
            run.targets.append(
                Target(
                    id=target_id,
                    area="postgres",
                    title=title,
                    status="fail",
                    reason=outcome,
                    requirement=f"<= {POSTGRES_LIMIT_MS:g} ms",
                )
            )
            continue
        summary = Summary.of(outcome)
        run.targets.append(
            at_most(
                id=target_id,
                area="postgres",
                title=title,
                value=summary.p95_ms,
                limit=POSTGRES_LIMIT_MS,
                unit="ms",
                reason=f"{summary.count} executions, p50 {summary.p50_ms or 0:.1f} ms, one connection (asyncpg)",
                details={"sql": DATABASE_QUERIES[name][0], **summary.as_dict()},
            )
        )


async def time_database_queries(url: str, repeats: int, advance: Callable[[int], None]) -> dict[str, list[float] | str]:
    """Each query `repeats` times on one connection: its durations (ms), or why it could not run."""
    import asyncpg

    from ..store.db import asyncpg_dsn

    unknown_hash = hashlib.sha256(os.urandom(32)).digest()
    results: dict[str, list[float] | str] = {}
    try:
        connection = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
    except (OSError, TimeoutError, ValueError, asyncpg.PostgresError) as exc:
        advance(repeats * len(DATABASE_QUERIES))
        return {name: f"cannot connect: {type(exc).__name__}: {exc}"[:300] for name in DATABASE_QUERIES}
    try:
        for name, (sql, takes_hash) in DATABASE_QUERIES.items():
            durations: list[float] = []
            try:
                for _ in range(repeats):
                    started = time.perf_counter()
                    await _fetch(connection.fetch(sql, unknown_hash) if takes_hash else connection.fetch(sql))
                    durations.append((time.perf_counter() - started) * 1000)
                    advance(1)
                results[name] = durations
            except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
                advance(repeats - len(durations))
                results[name] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        await connection.close()
    return results


async def _fetch(query: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(query, timeout=30)
