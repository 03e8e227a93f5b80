"""The `citadel` command: run the gateway (more subcommands arrive with keys and migrations)."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

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
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers or settings.workers,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        access_log=False,  # one structured line per request comes from the gateway itself
        timeout_graceful_shutdown=30,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="citadel", description="Citadel LLM Server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway (settings from the environment and .env)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(handler=_serve)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
