"""What every stack benchmark's command line does around its measurement: state the request, stop the stack on
SIGTERM and Ctrl-C, print the report, write the JSON to bench/results/<kind>-<timestamp>.json."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def begin(args: argparse.Namespace, body: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Print the request body; SIGTERM unwinds (so the stack is stopped); the result's common fields."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"Request body: {json.dumps(body)}", flush=True)
    result: dict[str, Any] = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": vars(args).copy()}
    return result | {"request_body": body, "cores": os.cpu_count()} | extra


def finish(kind: str, result: dict[str, Any], lines: list[str]) -> int:
    """Print the report and write the result as JSON; the exit status."""
    print("\n".join(lines))
    path = ROOT / "bench" / "results" / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nResults written to {path.relative_to(ROOT)}")
    return 0


def run(main: Callable[[], int], progress: Callable[[str], None]) -> None:
    """`python -m bench.<kind>`: exit with main's status; Ctrl-C has already stopped the stack (ExitStack)."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        progress("interrupted (the stack is stopped)")
        sys.exit(130)
