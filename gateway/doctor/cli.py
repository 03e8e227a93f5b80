"""`citadel doctor`: the first command an operator runs, on a host or against a running gateway (--url).

Only argparse at import time: `citadel serve` imports this module too, and pays nothing for it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .findings import Finding


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 60: {text}")
    return value


def add_doctor_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = commands.add_parser(
        "doctor",
        help="check this host (configuration, dependencies, ports, resources, weights) or a running gateway (--url)",
        description=(
            "Checks the configuration, every dependency (with latency), the model servers, ports, CPU, memory and "
            "disk against the models file, weights, the audit spool and versions; each problem with its fix. "
            "Exit status: 0 nothing failed (warnings allowed), 1 something failed, 2 usage error."
        ),
    )
    doctor.add_argument("--url", help="check the running gateway at this base URL (http://host:8000) instead")
    doctor.add_argument("--key", help="API key for --url's GET /v1/models (default: CITADEL_ADMIN_KEY, env or .env)")
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    doctor.add_argument("--timeout", type=_seconds, default=3.0, help="seconds each network call may take (default 3)")
    doctor.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    import asyncio
    import os
    import shutil
    import socket
    from pathlib import Path

    from dotenv import dotenv_values

    from .common import valid_url
    from .report import exit_status, render_json, render_text, use_colour

    workdir = Path.cwd()
    env_file = workdir / ".env"
    if args.url is not None:
        if not valid_url(args.url):
            print(f"citadel doctor: --url must be an http:// or https:// URL, not {args.url!r}", file=sys.stderr)
            return 2
        file_values = dotenv_values(env_file) if env_file.exists() else {}
        key = args.key or os.environ.get("CITADEL_ADMIN_KEY") or file_values.get("CITADEL_ADMIN_KEY")
        from .remote import url_findings

        findings = _run_all(lambda: asyncio.run(url_findings(args.url, key=key, timeout_s=args.timeout)))
        mode, target = "url", args.url.rstrip("/")
    else:
        from .runner import host_findings  # the database, Redis and Qdrant clients: only for a host check

        env_path = env_file if env_file.exists() else None
        findings = _run_all(
            lambda: asyncio.run(host_findings(timeout_s=args.timeout, workdir=workdir, env_file=env_path))
        )
        mode, target = "host", socket.gethostname()
    if args.json:
        print(render_json(findings, mode=mode, target=target))
    else:
        colour = use_colour(sys.stdout)
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        where = f"the gateway at {target}" if mode == "url" else f"host {target} ({workdir})"
        title = f"citadel doctor: {where}"
        print(render_text(findings, title=title, colour=colour, width=width))
    return exit_status(findings)


def _run_all(run: Callable[[], list[Finding]]) -> list[Finding]:
    """The findings; an error outside every check (there should be none) is one more finding, not a traceback."""
    from .findings import crashed

    try:
        return run()
    except Exception as exc:
        return [crashed("doctor", exc)]
