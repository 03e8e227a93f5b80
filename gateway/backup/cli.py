"""`citadel backup [DESTINATION]` and `citadel restore SOURCE`.

    citadel backup                                   # ./citadel-backup-<UTC time>.tar
    citadel backup /var/backups/citadel/nightly.tar  # or a new folder: any name not ending in .tar/.tar.gz/.tgz
    citadel restore nightly.tar --verify-only        # the manifest and every checksum; changes nothing
    citadel restore nightly.tar                      # into DATABASE_URL and this gateway's Qdrant
    citadel restore nightly.tar --force              # ... replacing data already there

DATABASE_URL comes from the environment or `.env` (unset: the embedded PostgreSQL of `make run`, when its
folder is here); Qdrant from QDRANT_URL / CITADEL_QDRANT_PATH and CITADEL_QDRANT_PREFIX, as the gateway reads
them. `--only database` or `--only vectors` takes one part. Restore checks both parts (data already there,
the tools, the Qdrant store free) before it changes either. Exit status: 0 done, 1 failed (one line on
stderr, never a traceback), 2 nothing configured to back up or restore into.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from . import BackupError

if TYPE_CHECKING:
    from .vectors import QdrantTarget

PARTS = ("database", "vectors")
# Where `make run` keeps its embedded PostgreSQL (services/stack.py), relative to the repository.
MAKE_RUN_CACHE = Path(".cache") / "citadel"


class NotConfigured(BackupError):
    """Nothing to back up or restore into (exit status 2)."""


def add_backup_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backup = commands.add_parser(
        "backup", help="back up the database's llm schema and the Qdrant collections into one folder or .tar"
    )
    backup.add_argument(
        "destination",
        nargs="?",
        type=Path,
        help="a new .tar (.tar.gz, .tgz) archive or folder (default: ./citadel-backup-<UTC time>.tar)",
    )
    backup.add_argument("--only", choices=PARTS, help="back up only the database or only the vectors")
    backup.set_defaults(handler=run_backup)
    restore = commands.add_parser(
        "restore", help="restore a backup into DATABASE_URL and Qdrant (checks it first; --force to replace data)"
    )
    restore.add_argument("source", type=Path, help="a backup folder or archive made by `citadel backup`")
    restore.add_argument("--force", action="store_true", help="replace a database or collections that hold data")
    restore.add_argument("--only", choices=PARTS, help="restore only the database or only the vectors")
    restore.add_argument("--verify-only", action="store_true", help="check the manifest and checksums, change nothing")
    restore.set_defaults(handler=run_restore)


def echo(line: str) -> None:
    print(line, flush=True)


def run_backup(args: argparse.Namespace) -> int:
    return _guarded(_backup, args, interrupted="interrupted: no backup was written")


def run_restore(args: argparse.Namespace) -> int:
    return _guarded(
        _restore,
        args,
        interrupted="interrupted: the restore is incomplete (a database restore in progress rolls back); run it again",
    )


def _guarded(command: Callable[[argparse.Namespace], int], args: argparse.Namespace, *, interrupted: str) -> int:
    """Expected failures as one line on stderr and a non-zero exit status; never a traceback."""
    import asyncpg

    try:
        return int(command(args))
    except NotConfigured as exc:
        print(f"citadel: {exc}", file=sys.stderr)
        return 2
    except BackupError as exc:
        print(f"citadel: {exc}", file=sys.stderr)
        return 1
    except asyncpg.PostgresError as exc:  # refused by the server: a missing privilege, a read-only server...
        print(f"citadel: PostgreSQL refused: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"citadel: {interrupted}", file=sys.stderr)
        return 130


def _parts(only: str | None) -> tuple[str, ...]:
    return (only,) if only else PARTS


# ---- configuration ----------------------------------------------------------------------------------------


def database_url() -> str:
    """DATABASE_URL (environment or .env); unset, `make run`'s embedded PostgreSQL when its folder is here."""
    from dotenv import dotenv_values

    from ..cli import database_url as configured

    if url := configured():
        return url
    password_file = MAKE_RUN_CACHE / "postgres.password"
    if password_file.is_file():
        env_file = Path(".env")
        values = dotenv_values(env_file) if env_file.exists() else {}
        port = os.environ.get("CITADEL_POSTGRES_PORT") or values.get("CITADEL_POSTGRES_PORT") or "15432"
        echo(f"DATABASE_URL is unset: using the embedded PostgreSQL of `make run` (127.0.0.1:{port})")
        password = quote(password_file.read_text().strip(), safe="")
        return f"postgresql://citadel_admin:{password}@127.0.0.1:{port}/citadel_ai"
    raise NotConfigured(
        "DATABASE_URL is not set (environment or .env); set it, or leave the database out with --only vectors"
    )


def qdrant_target() -> QdrantTarget:
    """The Qdrant settings exactly as the gateway reads them (environment and .env)."""
    from pydantic import SecretStr, ValidationError

    from ..settings import Settings, describe_settings_error
    from .vectors import QdrantTarget

    try:
        # Settings insists on an admin key; a backup never uses it, so any valid stand-in will do.
        settings = Settings(admin_key=SecretStr("not-used-by-backups"))  # type: ignore[call-arg]
    except ValidationError as exc:
        raise NotConfigured(describe_settings_error(exc)) from None
    return QdrantTarget.from_settings(settings)


# ---- the commands -----------------------------------------------------------------------------------------


def _backup(args: argparse.Namespace) -> int:
    from .. import __version__
    from .archive import human_size, staged, write_manifest
    from .postgres import backup_database
    from .vectors import backup_vectors

    started = time.monotonic()
    parts = _parts(args.only)
    url = database_url() if "database" in parts else None
    qdrant = qdrant_target() if "vectors" in parts else None
    now = datetime.now(UTC)
    destination = args.destination or Path(f"citadel-backup-{now:%Y%m%dT%H%M%SZ}.tar")
    with staged(destination, echo=echo) as root:
        content: dict[str, Any] = {
            "created_at": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "gateway_version": __version__,
            "alembic_revision": None,
            "postgres": None,
            "qdrant": None,
        }
        if url is not None:
            content["postgres"] = asyncio.run(backup_database(url, root, echo=echo))
            content["alembic_revision"] = content["postgres"]["alembic_revision"]
        if qdrant is not None:
            content["qdrant"] = backup_vectors(qdrant, root, echo=echo)
        manifest = write_manifest(root, content)
    echo(
        f"backup written: {destination} ({human_size(manifest['total_bytes'])}: {_contents(manifest)}) "
        f"in {time.monotonic() - started:.1f}s"
    )
    return 0


def _contents(manifest: dict[str, Any]) -> str:
    """ "schema llm at revision 0004, 3 Qdrant collection(s)" """
    revision = manifest.get("alembic_revision")
    database = f"schema llm at revision {revision}" if manifest.get("postgres") else "no database"
    vectors = manifest.get("qdrant")
    return f"{database}, " + (f"{len(vectors['collections'])} Qdrant collection(s)" if vectors else "no vectors")


def _restore(args: argparse.Namespace) -> int:
    from .archive import opened
    from .postgres import prepare_restore, restore_database
    from .vectors import check_restore, restore_vectors

    started = time.monotonic()
    parts = _parts(args.only)
    with opened(args.source, echo=echo) as (root, manifest):
        postgres: dict[str, Any] | None = manifest.get("postgres") if "database" in parts else None
        vectors: dict[str, Any] | None = manifest.get("qdrant") if "vectors" in parts else None
        made = f"{manifest.get('created_at')} by Citadel {manifest.get('gateway_version')}"
        echo(f"backup of {made}: {_contents(manifest)}; intact")
        if args.verify_only:
            return 0
        if not postgres and not vectors:
            raise BackupError(f"nothing to restore: the backup holds no {args.only or 'database or vectors'}")
        # Check both parts before changing either.
        plan = None
        if postgres:
            url = database_url()
            plan = asyncio.run(prepare_restore(url, root, postgres, force=args.force, echo=echo))
        qdrant = qdrant_target() if vectors else None
        if qdrant is not None and vectors:
            check_restore(qdrant, vectors, force=args.force)
        advice = asyncio.run(restore_database(plan, echo=echo)) if plan is not None else None
        if qdrant is not None and vectors:
            checksums = {name: entry["sha256"] for name, entry in manifest["files"].items()}
            restore_vectors(qdrant, root, vectors, checksums=checksums, force=args.force, echo=echo)
    echo(f"restore complete in {time.monotonic() - started:.1f}s; start the gateways again")
    if advice:
        echo(advice)
    return 0
