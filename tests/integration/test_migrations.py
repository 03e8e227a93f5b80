"""Alembic on a real PostgreSQL: upgrade, downgrade and upgrade again, each on a fresh database of its own,
checked against the SQLAlchemy models; the embedded server keeping its data across restarts; and the
rolled-back `db_session` fixture the other database tests build on."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from gateway.cli import main as citadel
from gateway.store import batch_models  # noqa: F401  (its tables join Base.metadata)
from gateway.store.db import asyncpg_dsn
from gateway.store.migrate import ALEMBIC_INI, MigrationError, downgrade, migrate
from gateway.store.models import SCHEMA, ApiKey, Base
from services.postgres import LocalPostgres

# The newest revision in migrations/versions, so adding a migration does not need these tests edited.
HEAD = ScriptDirectory.from_config(Config(str(ALEMBIC_INI))).get_current_head()


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    return name == SCHEMA if type_ == "schema" else True


async def _maintenance(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(make_url(asyncpg_dsn(url)).set(database="postgres").render_as_string(False))


@pytest_asyncio.fixture
async def fresh_url(postgres_server: LocalPostgres | None, postgres_url: str) -> AsyncIterator[str]:
    """The URL of a database that does not exist yet (migrate() creates it); dropped afterwards."""
    name = f"citadel_test_{secrets.token_hex(4)}"
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    connection = await _maintenance(postgres_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@pytest_asyncio.fixture
async def fresh_engine(fresh_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(fresh_url, poolclass=NullPool)
    yield engine
    await engine.dispose()


class Lines(list[str]):
    def __call__(self, line: str) -> None:
        self.append(line)


async def inspect_db(engine: AsyncEngine, fn: Callable[[Connection], Any]) -> Any:
    async with engine.connect() as connection:
        return await connection.run_sync(fn)


def differences(connection: Connection) -> list[Any]:
    """What autogenerate would change to make the live schema match the models (tables, columns, types,
    nullability, server defaults, indexes, unique constraints, foreign keys)."""
    opts = {
        "include_schemas": True,
        "include_name": include_name,
        "version_table_schema": SCHEMA,
        "compare_type": True,
        "compare_server_default": True,
    }
    return list(compare_metadata(MigrationContext.configure(connection, opts=opts), Base.metadata))


def live_constraints(connection: Connection) -> dict[str, set[str]]:
    """Names of tables, indexes, unique and check constraints in schema llm (compare_metadata skips checks)."""
    inspector = inspect(connection)
    tables = set(inspector.get_table_names(schema=SCHEMA)) - {"alembic_version"}
    found: dict[str, set[str]] = {"tables": tables, "indexes": set(), "uniques": set(), "checks": set()}
    for table in tables:
        found["indexes"] |= {
            str(i["name"]) for i in inspector.get_indexes(table, schema=SCHEMA) if not i.get("duplicates_constraint")
        }
        found["uniques"] |= {u["name"] for u in inspector.get_unique_constraints(table, schema=SCHEMA) if u["name"]}
        found["checks"] |= {c["name"] for c in inspector.get_check_constraints(table, schema=SCHEMA) if c["name"]}
    return found


def model_constraints() -> dict[str, set[str]]:
    from sqlalchemy import CheckConstraint, UniqueConstraint

    tables = Base.metadata.tables.values()
    constraints = [c for t in tables for c in t.constraints]
    return {
        "tables": {t.name for t in tables},
        "indexes": {str(i.name) for t in tables for i in t.indexes},
        "uniques": {str(c.name) for c in constraints if isinstance(c, UniqueConstraint)},
        "checks": {str(c.name) for c in constraints if isinstance(c, CheckConstraint)},
    }


async def schema_exists(engine: AsyncEngine) -> bool:
    async with engine.connect() as connection:
        query = text("SELECT count(*) FROM pg_namespace WHERE nspname = :schema")
        return bool(await connection.scalar(query, {"schema": SCHEMA}))


async def test_upgrade_matches_the_models(fresh_url: str, fresh_engine: AsyncEngine) -> None:
    lines = Lines()
    assert await migrate(fresh_url, echo=lines) == HEAD
    assert lines[0].endswith(": created")
    assert await inspect_db(fresh_engine, differences) == []
    assert await inspect_db(fresh_engine, live_constraints) == model_constraints()


async def test_downgrade_to_base_then_upgrade_again(fresh_url: str, fresh_engine: AsyncEngine) -> None:
    await migrate(fresh_url, echo=Lines())
    assert await downgrade(fresh_url, "base", echo=Lines()) is None
    assert not await schema_exists(fresh_engine)
    assert await migrate(fresh_url, echo=Lines()) == HEAD
    assert await inspect_db(fresh_engine, differences) == []


async def test_0005_gives_existing_keys_the_interactive_class_and_checks_both_fields(
    fresh_url: str, fresh_engine: AsyncEngine
) -> None:
    await migrate(fresh_url, revision="0004", echo=Lines())
    insert = text(
        "INSERT INTO llm.api_keys (id, name, prefix, key_hash, role) "
        "VALUES (gen_random_uuid(), :name, 'ck_old', :hash, 'user')"
    )
    async with fresh_engine.begin() as connection:
        await connection.execute(insert, {"name": "older", "hash": secrets.token_bytes(32)})
    assert await migrate(fresh_url, revision="0005", echo=Lines()) == "0005"
    async with fresh_engine.connect() as connection:
        row = (await connection.execute(text("SELECT priority, queue_weight FROM llm.api_keys"))).one()
    assert tuple(row) == ("interactive", None)
    for column, value in (
        ("priority", "'urgent'"),
        ("priority", "NULL"),
        ("queue_weight", "0"),
        ("queue_weight", "-1"),
    ):
        with pytest.raises(IntegrityError):
            async with fresh_engine.begin() as connection:
                await connection.execute(text(f"UPDATE llm.api_keys SET {column} = {value}"))
    async with fresh_engine.begin() as connection:
        await connection.execute(text("UPDATE llm.api_keys SET priority = 'batch', queue_weight = 2.5"))
    assert await downgrade(fresh_url, "0004", echo=Lines()) == "0004"
    columns = await inspect_db(
        fresh_engine, lambda c: {col["name"] for col in inspect(c).get_columns("api_keys", schema=SCHEMA)}
    )
    assert not {"priority", "queue_weight"} & columns and "vector_quota_documents" in columns
    checks = await inspect_db(fresh_engine, live_constraints)
    assert checks["checks"] == {"ck_api_keys_role", "ck_feedback_rating", "ck_audit_log_kind"}


async def test_0006_makes_the_batch_tables_with_checks_and_cascades_and_drops_only_them(
    fresh_url: str, fresh_engine: AsyncEngine
) -> None:
    await migrate(fresh_url, revision="0005", echo=Lines())
    before = await inspect_db(fresh_engine, live_constraints)
    assert await migrate(fresh_url, revision="0006", echo=Lines()) == "0006"
    key = "gen_random_uuid()"
    async with fresh_engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO llm.files (id, key_id, purpose, filename, bytes, lines) "
                f"VALUES ('file-a', {key}, 'batch', 'a.jsonl', 3, 1)"
            )
        )
        await connection.execute(text("INSERT INTO llm.file_chunks VALUES ('file-a', 0, 'abc')"))
        await connection.execute(
            text(
                "INSERT INTO llm.batches (id, key_id, endpoint, input_file_id, completion_window, status) "
                f"VALUES ('batch_a', {key}, '/v1/embeddings', 'file-a', '24h', 'validating')"
            )
        )
        await connection.execute(
            text("INSERT INTO llm.batch_lines (batch_id, line_no, custom_id, body) VALUES ('batch_a', 1, 'c1', '{}')")
        )
        row = (await connection.execute(text("SELECT total, completed, failed FROM llm.batches"))).one()
        line = (await connection.execute(text("SELECT status, attempts FROM llm.batch_lines"))).one()
    assert tuple(row) == (0, 0, 0) and tuple(line) == ("pending", 0)
    for statement in (
        "UPDATE llm.files SET purpose = 'fine-tune'",
        "UPDATE llm.batches SET status = 'running'",
        "UPDATE llm.batches SET endpoint = '/v1/responses'",
        "UPDATE llm.batch_lines SET status = 'lost'",
        "INSERT INTO llm.file_chunks VALUES ('file-missing', 0, 'x')",
    ):
        with pytest.raises(IntegrityError):
            async with fresh_engine.begin() as connection:
                await connection.execute(text(statement))
    async with fresh_engine.begin() as connection:
        await connection.execute(text("DELETE FROM llm.files"))
        await connection.execute(text("DELETE FROM llm.batches"))
        left = await connection.scalar(
            text("SELECT (SELECT count(*) FROM llm.file_chunks) + (SELECT count(*) FROM llm.batch_lines)")
        )
    assert left == 0  # the chunks and lines went with their file and batch
    assert await downgrade(fresh_url, "0005", echo=Lines()) == "0005"
    assert await inspect_db(fresh_engine, live_constraints) == before


async def test_migrate_twice_changes_nothing(fresh_url: str, fresh_engine: AsyncEngine) -> None:
    first, second = Lines(), Lines()
    await migrate(fresh_url, echo=first)
    oids_query = text("SELECT relname, oid FROM pg_class WHERE relnamespace = CAST(:schema AS regnamespace)")
    async with fresh_engine.connect() as connection:
        before: dict[str, int] = dict((await connection.execute(oids_query, {"schema": SCHEMA})).all())
    await migrate(fresh_url, echo=second)
    async with fresh_engine.connect() as connection:
        after: dict[str, int] = dict((await connection.execute(oids_query, {"schema": SCHEMA})).all())
    assert first[0].endswith(": created") and first[-1] == f"at revision {HEAD} (was base)"
    assert second[0].endswith(": exists") and second[-1] == f"at revision {HEAD} (unchanged)"
    assert after == before  # nothing dropped and made again


async def test_migrate_errors_are_one_line_without_the_password(postgres_url: str) -> None:
    url = make_url(postgres_url)
    wrong = url.set(password="not-the-password-xyz").render_as_string(hide_password=False)
    with pytest.raises(MigrationError, match="login refused") as refused:
        await migrate(wrong, echo=Lines())
    closed_port = url.set(host="127.0.0.1", port=1, password="secret-xyz").render_as_string(hide_password=False)
    with pytest.raises(MigrationError, match="cannot reach the server") as unreachable:
        await migrate(closed_port, echo=Lines())
    for error in (refused.value, unreachable.value):
        assert "\n" not in str(error) and "xyz" not in str(error)


def test_cli_migrate_without_database_url_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("CITADEL_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    assert citadel(["migrate"]) == 2
    assert "DATABASE_URL is not set" in capsys.readouterr().err


async def test_local_postgres_restart_keeps_data(postgres_server: LocalPostgres | None, db_engine: AsyncEngine) -> None:
    if postgres_server is None:
        pytest.skip("DATABASE_URL names an external server: not ours to restart")
    connection = await asyncpg.connect(postgres_server.dsn)
    await connection.execute("CREATE TABLE public.restart_probe (n int); INSERT INTO public.restart_probe VALUES (42)")
    await connection.close()
    async with db_engine.connect() as pooled:  # leaves a connection in the pool, dead after the restarts
        await pooled.scalar(text("SELECT 1"))
    try:
        for mode in ("fast", "immediate", "kill"):  # clean shutdown, crash of the server, SIGKILL of postmaster
            pid = postgres_server.pid()
            postgres_server.restart(mode=mode)
            assert postgres_server.is_ready() and postgres_server.pid() not in (None, pid)
            connection = await asyncpg.connect(postgres_server.dsn)
            assert await connection.fetchval("SELECT n FROM public.restart_probe") == 42, mode
            await connection.close()
        async with db_engine.connect() as pooled:  # the pool's old connections are dead: pre-ping replaces them
            assert await pooled.scalar(text("SELECT count(*) FROM llm.api_keys")) is not None
    finally:
        connection = await asyncpg.connect(postgres_server.dsn)
        await connection.execute("DROP TABLE IF EXISTS public.restart_probe")
        await connection.close()


async def test_db_session_commits_stay_inside_the_test(db_session: AsyncSession, db_engine: AsyncEngine) -> None:
    key = ApiKey(name="probe", prefix="ck-probe", key_hash=secrets.token_bytes(32), role="viewer")
    db_session.add(key)
    await db_session.commit()  # releases a savepoint only: the fixture's outer transaction rolls it all back
    assert await db_session.scalar(select(ApiKey.name).where(ApiKey.id == key.id)) == "probe"
    async with db_engine.connect() as other:
        assert await other.scalar(select(ApiKey.id).where(ApiKey.id == key.id)) is None
