"""`citadel migrate` / `downgrade` when the operator asks for something the database cannot do: one line that
says why, exit 1, and the schema left as it was."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from gateway.store.db import asyncpg_dsn
from gateway.store.migrate import MigrationError, downgrade, ensure_database, migrate
from services.postgres import LocalPostgres, sql_literal
from tests.support.postgres import fresh_database

ROOT = Path(__file__).resolve().parents[2]


def _quiet(line: str) -> None:
    pass


async def test_an_unknown_revision_is_refused_and_the_schema_stays(postgres_url: str, tmp_path: Path) -> None:
    async with fresh_database(postgres_url, prefix="badrev") as url:
        head = await migrate(url, echo=_quiet)
        with pytest.raises(MigrationError, match="nosuchrevision") as raised:
            await migrate(url, revision="nosuchrevision", echo=_quiet)
        assert "\n" not in str(raised.value)
        with pytest.raises(MigrationError, match="nosuchrevision"):
            await downgrade(url, "nosuchrevision", echo=_quiet)
        assert await migrate(url, echo=_quiet) == head  # still there, nothing to do

        # The same through the command: one line on stderr, exit 1.
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway", "migrate", "--revision", "nosuchrevision"],
            env={**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1, done.stderr
        assert done.stderr.startswith("citadel: ") and "nosuchrevision" in done.stderr
        assert "Traceback" not in done.stderr


async def test_a_missing_database_and_a_user_who_may_not_create_it(
    postgres_server: LocalPostgres | None, postgres_url: str
) -> None:
    if postgres_server is None:
        pytest.skip("needs the embedded server's superuser to make a role without CREATEDB")
    role, password = f"nocreate_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    postgres_server.psql(f"CREATE ROLE {role} LOGIN NOCREATEDB PASSWORD {sql_literal(password)};")
    try:
        url = (
            make_url(postgres_url)
            .set(username=role, password=password, database=f"missing_{secrets.token_hex(4)}")
            .render_as_string(hide_password=False)
        )
        with pytest.raises(MigrationError, match="does not exist and this user may not create it") as raised:
            await migrate(url, echo=_quiet)
        assert password not in str(raised.value)
    finally:
        postgres_server.psql(f"DROP ROLE IF EXISTS {role};")


async def test_ensure_database_twice_creates_once(postgres_url: str) -> None:
    name = f"ensure_{secrets.token_hex(4)}"
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    said: list[str] = []
    try:
        assert await ensure_database(url, echo=said.append) is True
        assert await ensure_database(url, echo=said.append) is False
        assert said == [f"database {name}: created", f"database {name}: exists"]
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(postgres_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
