"""The command line's side of live configuration (gateway/reload.py): `citadel reload`, which asks a running
gateway to apply config/models.yaml (POST /admin/reload), and `run_server`, with which `citadel serve`'s master
process passes a SIGHUP on to every worker. Light imports only: every `citadel` command loads this module."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def run_server(app: str, **options: Any) -> None:
    """uvicorn.run(app, **options), except with several workers: a SIGHUP to this (the master) process is passed
    on to every worker that has started, each of which reloads the models file in place. uvicorn's own answer to
    SIGHUP replaces every worker process: breakers and caches start again, and streams are cut after the
    shutdown grace. With one worker, this process is the worker and handles SIGHUP itself."""
    import uvicorn

    if int(options.get("workers") or 1) <= 1:
        uvicorn.run(app, **options)
        return
    from uvicorn.supervisors import Multiprocess

    class Master(Multiprocess):
        def handle_hup(self) -> None:
            logging.getLogger("uvicorn.error").info("Received SIGHUP: every worker reloads the models file")
            for process in self.processes:
                # A worker still starting has no handler yet (SIGHUP would end it); it reads the new file anyway.
                if process.pid is not None and process.is_ready(timeout=5):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGHUP)

    config = uvicorn.Config(app, **options)
    with contextlib.suppress(KeyboardInterrupt):
        Master(config, sockets=[config.bind_socket()]).run()


def add_reload_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "reload", help="apply config/models.yaml to a running gateway, without a restart (POST /admin/reload)"
    )
    parser.add_argument("--url", help="the gateway's base URL (default: http://127.0.0.1:<API_GATEWAY_PORT or 8000>)")
    parser.add_argument("--key", help="an admin key (default: CITADEL_ADMIN_KEY from the environment or .env)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer (default 30)")
    parser.set_defaults(handler=run_reload)


def _setting(name: str, env_file: Path = Path(".env")) -> str | None:
    from dotenv import dotenv_values

    return os.environ.get(name) or (dotenv_values(env_file).get(name) if env_file.exists() else None)


def run_reload(args: argparse.Namespace) -> int:
    """0: applied (the summary is printed as JSON); 1: the gateway refused the file; 2: no answer or no key."""
    port = _setting("API_GATEWAY_PORT") or _setting("CITADEL_PORT") or "8000"
    url = (args.url or f"http://127.0.0.1:{port}").rstrip("/")
    key = args.key or _setting("CITADEL_ADMIN_KEY")
    if not key:
        print("citadel: no admin key: pass --key or set CITADEL_ADMIN_KEY (environment or .env)", file=sys.stderr)
        return 2
    if not url.startswith(("http://", "https://")):
        print(f"citadel: --url must be an http:// or https:// address, not {url[:100]!r}", file=sys.stderr)
        return 2
    request = urllib.request.Request(f"{url}/admin/reload", method="POST", headers={"Authorization": f"Bearer {key}"})
    try:
        # The scheme is checked above: http(s) only, never file:// or a custom opener.
        with urllib.request.urlopen(request, timeout=args.timeout) as response:  # nosec B310
            report = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        print(f"citadel: the gateway answered {exc.code}: {message}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"citadel: no answer from {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    if report.get("workers_notified") is None:
        print(
            "citadel: without Redis only the worker that answered has reloaded; with several workers, send SIGHUP "
            "to `citadel serve` instead",
            file=sys.stderr,
        )
    return 0
