"""The local PostgreSQL runner creates its role and database under any name, quotes included, and again harmlessly."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path

from services.postgres import LocalPostgres
from tests.support.ports import free_port


def test_role_and_database_names_with_quotes_are_created_once() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="citadel-test-postgres-names-"))
    user, database = 'o\'brien "ops"', "it's the db"
    server = LocalPostgres(
        workdir / "data", free_port(), user=user, password=secrets.token_urlsafe(16), database=database
    )
    try:
        server.start()
        server.ensure_database()
        server.ensure_database()  # a second start finds both and leaves them
        roles = server.psql("SELECT rolname FROM pg_roles WHERE rolname LIKE 'o''brien%';").split("\n")
        owner = server.psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname LIKE 'it''s%';").strip()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    assert [role for role in roles if role] == [user]
    assert owner == user
