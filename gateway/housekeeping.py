"""Periodic background work of a gateway process: audit retention, and model health in llm.models."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .audit.retention import purge_older_than
from .catalog import Catalog
from .store.db import is_connection_error
from .store.model_records import record_health

log = logging.getLogger(__name__)


async def probe_models(catalog: Catalog, *, timeout_s: float = 2.0) -> dict[str, bool]:
    """Whether any replica of each model answers GET /health (a short timeout: a dead host is 'no')."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as client:

        async def answers(url: str) -> bool:
            try:
                async with client.get(f"{url}/health") as response:
                    return response.status == 200
            except (aiohttp.ClientError, TimeoutError, OSError):
                return False

        urls = sorted({url for spec in catalog.models.values() for url in spec.backends})
        up = dict(zip(urls, await asyncio.gather(*(answers(url) for url in urls)), strict=True))
    return {name: any(up[url] for url in spec.backends) for name, spec in catalog.models.items()}


async def _every(interval_s: float, job: Callable[[], Awaitable[None]], what: str) -> None:
    """Run `job` now and then every `interval_s`; a failure is logged and retried next time."""
    while True:
        try:
            await job()
        except Exception as exc:
            level = logging.WARNING if is_connection_error(exc) else logging.ERROR
            log.log(level, "%s failed: %s", what, type(exc).__name__)
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def housekeeping(
    *,
    catalog: Callable[[], Catalog],
    db_sessions: async_sessionmaker[AsyncSession] | None,
    audit_dsn: str | None,
    retention_days: int,
    health_interval_s: float = 60.0,
    retention_interval_s: float = 3600.0,
) -> AsyncIterator[None]:
    """Run the periodic jobs for as long as the app runs (nothing without a database); `catalog()` is the
    catalogue in force (a config reload may replace it)."""
    tasks: list[asyncio.Task[None]] = []
    if db_sessions is not None:
        sessions = db_sessions

        async def health() -> None:
            status = await probe_models(catalog())
            async with sessions() as session:
                await record_health(session=session, healthy=status)

        tasks.append(asyncio.create_task(_every(health_interval_s, health, "model health record")))
    if audit_dsn is not None:
        dsn = audit_dsn

        async def retention() -> None:
            deleted = await purge_older_than(dsn, retention_days)
            if deleted:
                log.info("audit retention: deleted %d rows older than %d days", deleted, retention_days)

        tasks.append(asyncio.create_task(_every(retention_interval_s, retention, "audit retention")))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
