"""PostgreSQL for tests: a real server, migrated to head; never SQLite, never a mock.

With DATABASE_URL unset, one embedded server (services.postgres.LocalPostgres) runs for the whole session in a
temporary folder on a free port. With DATABASE_URL set, that server is used instead (it is migrated to head;
tests that make databases of their own need CREATEDB there) and `postgres_server` is None, so tests that stop
and restart the server skip.

Fixtures:
    postgres_server  session   the LocalPostgres, or None for an external server
    postgres_url     session   SQLAlchemy URL (postgresql+asyncpg://...) of the migrated database
    db_engine        session   an AsyncEngine on it (gateway.store.db.create_engine)
    db_session       function  an AsyncSession in a transaction rolled back afterwards: commits inside a
                               test only release savepoints, so nothing a test writes outlives it
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from gateway.store.db import asyncpg_dsn, create_engine, normalize_url
from gateway.store.migrate import migrate
from services.postgres import LocalPostgres
from tests.support.ports import free_port


def _quiet(line: str) -> None:
    pass


@pytest_asyncio.fixture(scope="session")
async def postgres_server() -> AsyncIterator[LocalPostgres | None]:
    """The embedded server (started, database migrated to head), or None when DATABASE_URL names one."""
    external = os.environ.get("DATABASE_URL")
    if external:
        await migrate(external, echo=_quiet)
        yield None
        return
    # Not under pytest's temporary folder: run as root, the server's user must traverse its parents, and every
    # pytest session that starts (another one beside this, say) takes that access away from pytest-of-root.
    workdir = Path(tempfile.mkdtemp(prefix="citadel-test-postgres-"))
    server = LocalPostgres(workdir / "data", free_port(), password=secrets.token_urlsafe(16))
    try:
        server.start()
        server.ensure_database()
        await migrate(server.url, echo=_quiet)
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: LocalPostgres | None) -> str:
    return postgres_server.url if postgres_server is not None else normalize_url(os.environ["DATABASE_URL"])


@pytest_asyncio.fixture(scope="session")
async def db_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(postgres_url, pool_size=5)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture
async def db_session(db_engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """SQLAlchemy's "join a session into an external transaction" recipe: everything is rolled back."""
    async with db_engine.connect() as connection:
        transaction = await connection.begin()
        session = AsyncSession(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield session
        finally:
            await session.close()
            await transaction.rollback()


@asynccontextmanager
async def fresh_database(postgres_url: str, *, prefix: str) -> AsyncIterator[str]:
    """A new database on the shared server, migrated to head and dropped afterwards; yields its SQLAlchemy URL.

    For tests that count rows exactly: nothing another test writes can reach it.
    """
    name = f"{prefix}_{secrets.token_hex(4)}"
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    await migrate(url, echo=_quiet)
    try:
        yield url
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(postgres_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
