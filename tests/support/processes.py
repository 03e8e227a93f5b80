"""Start and stop real server processes for tests (services.local_server.LocalServer), waiting on their health URL."""

from __future__ import annotations

import functools
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from services.local_server import LocalServer, ServerError, stop_groups

# A whole stack's first start: model servers take 1-3 minutes on 2 cores; the first run also makes the demo model.
STACK_READY_TIMEOUT_S = 900


def answers(url: str, timeout_s: float = 1.0) -> bool:
    """True when GET `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_healthy(url: str, *, process: subprocess.Popen[bytes], timeout_s: float, log: Path | None = None) -> None:
    """Until `url` answers 200; RuntimeError (with the log's end) if `process` exits or `timeout_s` passes first."""
    log_path = log or Path("/dev/null")
    server = LocalServer("the process", [], log_path=log_path, ready_check=functools.partial(answers, url))
    server.process, server.started_at = process, time.monotonic()  # started elsewhere: only waited on here
    server.wait_ready(timeout_s)


def start(
    command: list[str], *, env: dict[str, str], cwd: Path, log: Path, health_url: str, timeout_s: float = 30
) -> subprocess.Popen[bytes]:
    """`command` in a process group of its own, once `health_url` answers; stopped again if it never does."""
    ready = functools.partial(answers, health_url)
    name = " ".join([Path(command[0]).name, *command[1:3]])  # `python -m gateway`, for error messages
    server = LocalServer(name, command, log_path=log, env=env, cwd=cwd, ready_check=ready)
    server.start()
    try:
        server.wait_ready(timeout_s)
    except ServerError:
        server.stop(signal.SIGKILL)
        raise
    assert server.process is not None
    return server.process


def stop(process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout_s: float = 15) -> int:
    """`sig` to the process, SIGKILL to its whole group after `timeout_s`; its exit status."""
    stop_groups([(process.pid, sig)], grace_s=timeout_s, leaders=[process])
    return process.wait()
