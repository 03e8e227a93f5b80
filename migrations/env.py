"""Alembic environment: async (asyncpg), every table in schema `llm`, the version table in `llm` too.

The URL comes from the caller (`config.attributes["url"]`, or a connection in `config.attributes["connection"]`
as `gateway.store.migrate` passes it) or else from DATABASE_URL. Each run holds an advisory lock, so gateways
starting together migrate one at a time, and creates schema `llm` first (the version table lives there).
A downgrade to base also drops the version table and the schema once nothing else is left in it.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.store import batch_models  # noqa: F401  (its tables join Base.metadata)
from gateway.store.db import normalize_url
from gateway.store.models import SCHEMA, Base

config = context.config
target_metadata = Base.metadata

# Any number; the same for every Citadel process that migrates this database.
MIGRATION_LOCK_ID = 0x63697461  # "cita"


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Compare only our schema: never public or another application's tables."""
    return name == SCHEMA if type_ == "schema" else True


OPTIONS: dict[str, Any] = {
    "target_metadata": target_metadata,
    "include_schemas": True,
    "include_name": include_name,
    "version_table_schema": SCHEMA,
    "compare_type": True,
}


def database_url() -> str:
    url = config.attributes.get("url") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("alembic: set DATABASE_URL (postgresql://user:password@host:port/citadel_ai)")
    return normalize_url(url)


def run_migrations_offline() -> None:
    """Emit SQL instead of running it (`alembic upgrade head --sql`)."""
    context.configure(url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"}, **OPTIONS)
    with context.begin_transaction():
        context.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, **OPTIONS)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        context.run_migrations()
        drop_schema_at_base(connection)


def drop_schema_at_base(connection: Connection) -> None:
    """At base only the version table is left of ours: drop it and the schema, unless something else is there."""
    if context.get_context().get_current_heads():
        return
    others = connection.scalar(
        text(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :schema AND c.relname NOT IN ('alembic_version', 'alembic_version_pkc')"
        ),
        {"schema": SCHEMA},
    )
    if others == 0:
        connection.execute(text(f"DROP TABLE IF EXISTS {SCHEMA}.alembic_version"))
        connection.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA}"))  # RESTRICT: keeps anything we did not make


async def run_async_migrations() -> None:
    engine = create_async_engine(database_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
