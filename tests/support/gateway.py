"""A real gateway process (`citadel serve`) for integration tests: its environment, start, and the wait for
every worker (its /health answers as soon as the first one is up)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

from tests.conftest import free_port
from tests.support import processes
from tests.support.catalogs import ADMIN_KEY, write_models_file

ROOT = Path(__file__).resolve().parents[2]
# How long a gateway may take to answer (every worker started): a ceiling, not a wait. Each worker imports the
# whole gateway; under coverage (`make test`) that is about half as slow again, and several workers start at
# once on 2 shared cores.
STARTUP_TIMEOUT_S = 60


@dataclass
class GatewayProcess:
    process: Popen[bytes]
    url: str
    log: Path


def gateway_env(workdir: Path, models: dict[str, dict[str, object]], **settings: str) -> dict[str, str]:
    """The environment of a gateway serving `models`, without the developer's DATABASE_URL or REDIS_URL."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CITADEL_ADMIN_KEY": ADMIN_KEY,
        "CITADEL_CONFIG_PATH": str(write_models_file(workdir / "models.yaml", models)),
        "CITADEL_PROFILE": "",
        "CITADEL_AUDIT_SPOOL_DIR": str(workdir / "spool"),
    }
    for name in ("DATABASE_URL", "REDIS_URL"):
        env.pop(name, None)
    return {**env, **settings}


def start_gateway(workdir: Path, env: dict[str, str], *, workers: int = 1) -> GatewayProcess:
    """Start `citadel serve` in `workdir` (so no `.env` of the developer is read); wait for every worker."""
    port = free_port()
    log = workdir / "gateway.log"
    process = processes.start(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        cwd=workdir,
        log=log,
        health_url=f"http://127.0.0.1:{port}/health",
        timeout_s=STARTUP_TIMEOUT_S,
    )
    wait_for_startups(log, workers)
    return GatewayProcess(process=process, url=f"http://127.0.0.1:{port}", log=log)


@contextmanager
def running_gateway(workdir: Path, env: dict[str, str], *, workers: int = 1) -> Iterator[GatewayProcess]:
    gateway = start_gateway(workdir, env, workers=workers)
    try:
        yield gateway
    finally:
        processes.stop(gateway.process)


def wait_for_startups(log: Path, count: int, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Until `count` workers have logged their start (uvicorn restarts a killed worker: counts grow)."""
    deadline = time.monotonic() + timeout_s
    while log.read_text().count("Application startup complete") < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert log.read_text().count("Application startup complete") >= count, log.read_text()[-3000:]
