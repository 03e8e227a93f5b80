"""The database engine and sessions: URL normalisation, one AsyncEngine per process, and `SessionDep`.

The engine and its sessionmaker are built once in the lifespan and kept on `app.state.db_sessions`
(None when the gateway runs without DATABASE_URL). Routes take a session through the typed dependency:

    @router.get("/v1/sessions")
    async def list_sessions(session: SessionDep) -> ...: ...

Connection failures inside a route (refused, timed out, dropped, server starting or shutting down) become
`DatabaseUnavailable` (503, "the database is unreachable"); the client never sees a traceback or the DSN.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from ..errors import DatabaseUnavailable, InvalidRequest
from ..observability.health_metrics import count_postgres_failure

log = logging.getLogger(__name__)

_SCHEMES = {"postgresql", "postgres", "postgresql+asyncpg"}

# asyncpg errors that mean "no usable connection", as opposed to a bad query.
_ASYNCPG_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # class 08, and ConnectionDoesNotExistError (dropped mid-query)
    asyncpg.CannotConnectNowError,  # 57P03: starting up, shutting down
    asyncpg.AdminShutdownError,  # 57P01
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.TooManyConnectionsError,  # 53300
    asyncpg.InvalidAuthorizationSpecificationError,  # 28000 and 28P01 (bad password)
)
_CONNECTION_ERRORS = (OSError, TimeoutError, sa_exc.TimeoutError, *_ASYNCPG_CONNECTION_ERRORS)


def normalize_url(url: str) -> str:
    """Any of postgresql://, postgres://, postgresql+asyncpg:// as the SQLAlchemy asyncpg URL (a string)."""
    return _parse(url).render_as_string(hide_password=False)


def asyncpg_dsn(url: str) -> str:
    """The plain `postgresql://` DSN for raw asyncpg use (asyncpg.connect / create_pool)."""
    parsed = _parse(url)
    query = dict(parsed.query)
    if "ssl" in query and "sslmode" not in query:
        query["sslmode"] = query.pop("ssl")
    return parsed.set(drivername="postgresql", query=query).render_as_string(hide_password=False)


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url.strip())
    except sa_exc.ArgumentError as exc:
        raise ValueError("DATABASE_URL is not a valid URL (expected postgresql://user:pw@host:port/db)") from exc
    if parsed.drivername not in _SCHEMES:
        raise ValueError(f"DATABASE_URL must start with postgresql://, not {parsed.drivername}://")
    query = dict(parsed.query)
    if "sslmode" in query:  # libpq's name; SQLAlchemy hands query options to asyncpg.connect, which says `ssl`
        query["ssl"] = query.pop("sslmode")
    return parsed.set(drivername="postgresql+asyncpg", query=query)


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_overflow: int = 10,
    pool_timeout_s: float = 5.0,
    pool_recycle_s: float = 1800.0,
    connect_timeout_s: float = 3.0,
    command_timeout_s: float = 30.0,
    application_name: str = "citadel-gateway",
    **kwargs: Any,
) -> AsyncEngine:
    """The process's one AsyncEngine: a checked (pre-ping) pool that gives up on a dead server in seconds."""
    return create_async_engine(
        normalize_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout_s,
        pool_recycle=pool_recycle_s,
        pool_pre_ping=True,
        hide_parameters=True,  # SQL errors would otherwise carry the bound values (prompts, hashes) into logs
        connect_args={
            "timeout": connect_timeout_s,
            "command_timeout": command_timeout_s,
            # Prepared statements are reused; after five runs PostgreSQL may switch to a generic plan that
            # is slow for some parameters (audit queries over 1M rows: p95 90-320 ms generic, 6-14 ms custom).
            "server_settings": {"application_name": application_name, "plan_cache_mode": "force_custom_plan"},
        },
        **kwargs,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose objects stay readable after commit (routes serialise them after committing)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def _in_chain(exc: BaseException, matches: Callable[[BaseException], bool]) -> bool:
    """True when `exc` or any error it wraps (its causes and contexts) matches."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if matches(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def is_connection_error(exc: BaseException) -> bool:
    """True when `exc`, or any error it wraps, says the database cannot be reached (not a bad query)."""
    return _in_chain(
        exc,
        # SQLAlchemy's own disconnect detection ("connection is closed" and the like) counts too.
        lambda e: isinstance(e, _CONNECTION_ERRORS) or (isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated),
    )


# Values PostgreSQL or asyncpg refuse: class 22 on the server (a NUL character, a date or number out of range),
# and asyncpg's own check of an argument before sending it (an integer past 64 bits).
_DATA_ERRORS: tuple[type[BaseException], ...] = (asyncpg.exceptions.DataError, asyncpg.exceptions._base.DataError)


def is_data_error(exc: BaseException) -> bool:
    """True when `exc`, or any error it wraps, is the database refusing a value of the request (not a fault)."""
    return _in_chain(exc, lambda e: isinstance(e, _DATA_ERRORS))


def refused_value() -> InvalidRequest:
    """The 400 for a value the database cannot store or compare; which value is not echoed back."""
    return InvalidRequest(
        "A value in this request cannot be stored or compared (a NUL character, or a number or date out of range)."
    )


def unavailable(exc: BaseException, *, operation: str = "request") -> DatabaseUnavailable:
    """The 503 for a connection failure, counted under `operation` (a fixed word); logged by class name only
    (no DSN, no SQL, no parameters)."""
    log.warning("database unreachable: %s", type(exc).__name__)
    count_postgres_failure(operation)
    if isinstance(exc, sa_exc.TimeoutError):
        return DatabaseUnavailable("The database is busy: no connection became free in time. Try again.")
    return DatabaseUnavailable("The database is unreachable. Try again later.")


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One AsyncSession per request, closed afterwards; 503 when there is no database or it is unreachable."""
    sessions: async_sessionmaker[AsyncSession] | None = getattr(request.app.state, "db_sessions", None)
    if sessions is None:
        raise DatabaseUnavailable("This server runs without a database (DATABASE_URL is not set).")
    try:
        async with sessions() as session:
            yield session
    except Exception as exc:
        if is_connection_error(exc):
            raise unavailable(exc) from exc
        if is_data_error(exc):
            raise refused_value() from exc
        raise


SessionDep = Annotated[AsyncSession, Depends(get_session)]
