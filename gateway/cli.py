"""The `citadel` command: run the gateway (`serve`), migrate its database (`migrate`, `downgrade`), and
manage API keys (`keys create|list|update|revoke`), apply config/models.yaml to a running gateway (`reload`:
gateway/reload_cli.py), back up and restore the database and vectors (`backup`, `restore`: gateway/backup/cli.py),
and check a host or a running gateway (`doctor`: gateway/doctor/)."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from .keys_cli import add_keys_parser
from .reload_cli import add_reload_parser, run_server

if TYPE_CHECKING:
    from .settings import Settings


def _serve(args: argparse.Namespace) -> int:
    from .catalog import ConfigError, load_catalog
    from .settings import Settings, config_environment, describe_settings_error

    try:
        settings = Settings()  # type: ignore[call-arg]
        # Check the models file here so a mistake is one clear line, not a traceback per worker.
        load_catalog(settings.config_path, profile=settings.profile, env=config_environment())
    except ValidationError as exc:
        print(f"citadel: {describe_settings_error(exc)}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"citadel: {exc}", file=sys.stderr)
        return 2
    from .observability.logs import log_config

    workers = args.workers or settings.workers
    # The workers read their settings anew: they must know how many they are (the embedded Qdrant store,
    # for one, refuses to serve several processes and says so on every worker, not on all but one).
    os.environ["API_GATEWAY_WORKERS"] = str(workers)
    # Several workers (or a folder given): metrics in files that every worker's /metrics adds up.
    metrics_dir = _metrics_dir() if workers > 1 or os.environ.get("PROMETHEUS_MULTIPROC_DIR") else None
    proxy_headers, forwarded_allow_ips = proxy_options(settings)
    try:
        run_server(  # uvicorn.run(); with several workers, SIGHUP reaches each (each reloads config/models.yaml)
            "gateway.app:create_app",
            factory=True,
            host=args.host or settings.host,
            port=args.port or settings.port,
            workers=workers,
            loop="uvloop",
            http="httptools",
            log_level=settings.log_level,
            log_config=log_config(level=settings.log_level, fmt=settings.log_format),
            access_log=False,  # one structured line per request comes from the gateway itself
            # SIGTERM: stop accepting, let in-flight requests and streams finish this long, then shut down.
            timeout_graceful_shutdown=int(settings.shutdown_grace_s),
            proxy_headers=proxy_headers,
            forwarded_allow_ips=forwarded_allow_ips,
        )
    finally:
        if metrics_dir is not None and metrics_dir.name.startswith(_METRICS_TMP_PREFIX):
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


_METRICS_TMP_PREFIX = "citadel-metrics-"


def _metrics_dir() -> Path:
    """A fresh folder for every worker's metric files (set before any worker imports prometheus_client).

    PROMETHEUS_MULTIPROC_DIR if set (emptied: values of an earlier run must not count), else a new
    temporary folder, removed when the gateway exits.
    """
    import tempfile

    from .observability.exposition import MULTIPROC_ENV, prepare_multiprocess_dir

    given = os.environ.get(MULTIPROC_ENV)
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix=_METRICS_TMP_PREFIX))
    prepare_multiprocess_dir(path)
    return path


def database_url(env_file: Path = Path(".env")) -> str | None:
    """DATABASE_URL (or CITADEL_DATABASE_URL) from the environment, else from `.env`."""
    from dotenv import dotenv_values

    file_values = dotenv_values(env_file) if env_file.exists() else {}
    for name in ("DATABASE_URL", "CITADEL_DATABASE_URL"):
        value = os.environ.get(name) or file_values.get(name)
        if value:
            return value
    return None


def _migrate(args: argparse.Namespace) -> int:
    from .store.migrate import MigrationError, downgrade, migrate

    url = database_url()
    if url is None:
        print(
            "citadel: DATABASE_URL is not set (environment or .env), so there is nothing to migrate; "
            "`make run` starts its own PostgreSQL and migrates it.",
            file=sys.stderr,
        )
        return 2
    try:
        if args.command == "downgrade":
            asyncio.run(downgrade(url, args.revision))
        else:
            asyncio.run(migrate(url, revision=args.revision))
    except (MigrationError, ValueError) as exc:
        print(f"citadel: {exc}", file=sys.stderr)
        return 1
    return 0


def _keys(args: argparse.Namespace) -> int:
    from .keys_cli import run_keys

    url = database_url()
    if url is None:
        print("citadel: DATABASE_URL is not set (environment or .env): keys live in the database", file=sys.stderr)
        return 2
    return run_keys(args, url)


def proxy_options(settings: Settings) -> tuple[bool, str | None]:
    """uvicorn's proxy_headers and forwarded_allow_ips: off unless proxies are named (its default trusts 127.0.0.1)."""
    trusted = settings.trusted_proxies.strip()
    return bool(trusted), trusted or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="citadel", description="Citadel LLM Server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway (settings from the environment and .env)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(handler=_serve)
    migrate = commands.add_parser(
        "migrate", help="create the database if missing and upgrade its schema (DATABASE_URL from env or .env)"
    )
    migrate.add_argument("--revision", default="head", help="target revision (default: head)")
    migrate.set_defaults(handler=_migrate)
    downgrade = commands.add_parser("downgrade", help="downgrade the schema to a revision ('base': drop it all)")
    downgrade.add_argument("revision")
    downgrade.set_defaults(handler=_migrate)
    add_keys_parser(commands)
    commands.choices["keys"].set_defaults(handler=_keys)
    add_reload_parser(commands)  # `citadel reload`
    __import__("gateway.validate.cli", fromlist=["cli"]).add_validate_parser(commands)  # `citadel validate`
    __import__("gateway.backup.cli", fromlist=["cli"]).add_backup_parsers(commands)  # `citadel backup|restore`
    __import__("gateway.doctor.cli", fromlist=["cli"]).add_doctor_parser(commands)  # `citadel doctor`
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
