"""Schema migrations run from code (`citadel migrate`, the local stack, the tests): Alembic on one connection.

`migrate(url)` creates the database named in the URL when it is missing (if the user may: CREATEDB), then
upgrades to head; running it twice changes nothing the second time. `downgrade(url, revision)` goes back.
Both print short progress lines and fail with `MigrationError`, one line that never shows the password.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy import exc as sa_exc
from sqlalchemy import pool
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from .db import asyncpg_dsn, normalize_url
from .models import SCHEMA

ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_INI = ROOT / "alembic.ini"
CONNECT_TIMEOUT_S = 5.0

Echo = Callable[[str], None]


class MigrationError(Exception):
    """A migration could not run; the message is one line, safe to print."""


async def migrate(url: str, *, revision: str = "head", echo: Echo = print) -> str | None:
    """Create the database if missing, then upgrade to `revision`; returns the revision reached."""
    await ensure_database(url, echo=echo)
    echo(f"migrating to {revision}")
    return await _run_alembic(url, lambda cfg: command.upgrade(cfg, revision), echo=echo)


async def downgrade(url: str, revision: str, *, echo: Echo = print) -> str | None:
    """Downgrade to `revision` ("base" drops everything, schema included); returns the revision reached."""
    connection = await _connect(asyncpg_dsn(url))
    await connection.close()
    echo(f"downgrading to {revision}")
    return await _run_alembic(url, lambda cfg: command.downgrade(cfg, revision), echo=echo)


async def ensure_database(url: str, *, echo: Echo = print) -> bool:
    """Create the URL's database through the `postgres` maintenance database if missing; True if created."""
    dsn = asyncpg_dsn(url)
    name = make_url(dsn).database or ""
    try:
        connection = await _connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await connection.close()
        echo(f"database {name}: exists")
        return False
    maintenance = await _connect(make_url(dsn).set(database="postgres").render_as_string(hide_password=False))
    try:
        await maintenance.execute(f'CREATE DATABASE "{name.replace(chr(34), chr(34) * 2)}"')
    except asyncpg.DuplicateDatabaseError:
        echo(f"database {name}: exists")  # created by someone else in the meantime
        return False
    except asyncpg.InsufficientPrivilegeError as exc:
        raise MigrationError(f"database {name} does not exist and this user may not create it ({exc})") from None
    finally:
        await maintenance.close()
    echo(f"database {name}: created")
    return True


async def _connect(dsn: str) -> asyncpg.Connection:
    """asyncpg.connect with one-line errors for an unreachable server or refused credentials."""
    try:
        return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    except asyncpg.InvalidCatalogNameError:
        raise
    except Exception as exc:
        reason = describe_connect_error(exc)
        if reason is None:
            raise
        raise MigrationError(f"{_where(dsn)}: {reason}") from None


def describe_connect_error(exc: BaseException) -> str | None:
    """A short reason when `exc` (or what it wraps) is a connection or login failure; None otherwise."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, asyncpg.InvalidAuthorizationSpecificationError):
            return f"login refused: {current}"
        if isinstance(current, ConnectionRefusedError):
            return "cannot reach the server: connection refused"
        if isinstance(current, TimeoutError):
            return f"cannot reach the server: no answer within {CONNECT_TIMEOUT_S:g}s"
        if isinstance(current, asyncpg.CannotConnectNowError | OSError):
            return f"cannot reach the server: {current}"
        current = current.__cause__ or current.__context__
    return None


def _where(dsn: str) -> str:
    parsed = make_url(dsn)
    return f"PostgreSQL at {parsed.host or 'localhost'}:{parsed.port or 5432} (user {parsed.username})"


def alembic_config(url: str) -> Config:
    """The repository's alembic.ini, with the URL handed over in memory (never written anywhere)."""
    config = Config(str(ALEMBIC_INI))
    config.attributes["url"] = url
    return config


def current_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table_schema": SCHEMA})
    return context.get_current_revision()


async def _run_alembic(url: str, run: Callable[[Config], None], *, echo: Echo) -> str | None:
    """Run one Alembic command in one transaction on one connection; print where it ended."""
    engine = create_async_engine(
        normalize_url(url), poolclass=pool.NullPool, connect_args={"timeout": CONNECT_TIMEOUT_S}
    )
    config = alembic_config(url)

    def steps(connection: Connection) -> tuple[str | None, str | None]:
        before = current_revision(connection)
        config.attributes["connection"] = connection
        run(config)
        return before, current_revision(connection)

    try:
        async with engine.begin() as connection:
            before, after = await connection.run_sync(steps)
    except CommandError as exc:
        raise MigrationError(str(exc)) from None
    except sa_exc.DBAPIError as exc:
        reason = describe_connect_error(exc) or f"migration failed: {str(exc.orig).splitlines()[0]}"
        raise MigrationError(f"{_where(asyncpg_dsn(url))}: {reason}") from None
    except OSError as exc:
        raise MigrationError(f"{_where(asyncpg_dsn(url))}: {describe_connect_error(exc)}") from None
    finally:
        await engine.dispose()
    change = "unchanged" if before == after else f"was {before or 'base'}"
    echo(f"at revision {after or 'base'} ({change})")
    return after
