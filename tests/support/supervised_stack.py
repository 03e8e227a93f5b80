"""A `make run` stack of its own (services.stack on free ports) for the supervision test and the MTTR benchmark:
start it, find a server's current pid in the runner's output, kill it, and time the way back."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from services.local_server import group_members
from tests.support import processes
from tests.support.catalogs import ADMIN_KEY
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHAT = {"model": "phi3", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8}
EMBED = {"model": "embed", "input": ["the rest keeps serving"]}


@dataclass
class SupervisedStack:
    url: str
    runner: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, int]
    mttr: dict[str, float] = field(default_factory=dict)

    def pid(self, name: str) -> int:
        """The newest pid the runner reported for server `name` (it prints each start and restart)."""
        found = re.findall(rf"{re.escape(name)}: (?:starting|started again) \(pid (\d+)", self.log.read_text())
        assert found, f"no pid of {name} in the runner's output"
        return int(found[-1])

    def post(self, path: str, body: Mapping[str, object], timeout_s: float = 60) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, headers=HEADERS, timeout=timeout_s)

    def get(self, path: str, timeout_s: float = 10) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=HEADERS, timeout=timeout_s)

    def model_server_answers(self, name: str) -> bool:
        """The model server's own /health, straight to its port (not through the gateway)."""
        return processes.answers(f"http://127.0.0.1:{self.ports[name]}/health", timeout_s=5)


def stack_environment(ports: Mapping[str, int], *, cache: Path, admin_key: str) -> dict[str, str]:
    """The environment of a `services.stack` runner on ports of its own (keys demo-chat, embed, postgres, redis)
    with its data under `cache`: this process's environment without its database and Redis addresses."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return env | {
        "CITADEL_ADMIN_KEY": admin_key,
        "CITADEL_PROFILE": "local",
        "CITADEL_DEMO_CHAT_PORT": str(ports["demo-chat"]),
        "CITADEL_EMBED_PORT": str(ports["embed"]),
        "CITADEL_POSTGRES_PORT": str(ports["postgres"]),
        "CITADEL_REDIS_PORT": str(ports["redis"]),
        "CITADEL_CACHE_DIR": str(cache),
        "PYTHONUNBUFFERED": "1",
    }


@contextmanager
def supervised_stack(log: Path) -> Iterator[SupervisedStack]:
    """The stack as `make run` starts it, on free ports and with data of its own; killed (SIGKILL) at the end
    unless the caller stopped it already."""
    # The stack's data outside pytest's folder: run as root, PostgreSQL's user must traverse its parents, and
    # every pytest session that starts meanwhile takes that access away from pytest-of-root.
    cache = Path(tempfile.mkdtemp(prefix="citadel-supervised-"))
    ports = {name: free_port() for name in ("gateway", "demo-chat", "embed", "postgres", "redis")}
    env = stack_environment(ports, cache=cache, admin_key=ADMIN_KEY)
    url = f"http://127.0.0.1:{ports['gateway']}"
    runner = processes.start(
        [sys.executable, "-m", "services.stack", "--gateway-port", str(ports["gateway"])],
        env=env,
        cwd=ROOT,
        log=log,
        health_url=f"{url}/health",
        timeout_s=processes.STACK_READY_TIMEOUT_S,
    )
    try:
        yield SupervisedStack(url=url, runner=runner, log=log, ports=ports)
    finally:
        processes.stop(runner, sig=signal.SIGKILL)  # the watchdog stops every server with it
        shutil.rmtree(cache, ignore_errors=True)


def until(
    check: Callable[[], bool], *, timeout_s: float, what: str, meanwhile: Callable[[], None] = lambda: None
) -> float:
    """Seconds until `check()` passes, calling `meanwhile()` (checks on the rest of the stack) in between."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started >= timeout_s:
            raise TimeoutError(f"{what} not back within {timeout_s}s")
        meanwhile()
        time.sleep(0.5)
    return time.monotonic() - started


def succeeds(call: Callable[[], httpx.Response]) -> bool:
    try:
        return call().status_code == 200
    except httpx.HTTPError:
        return False


def group_of(pid: int) -> list[int]:
    """The members of the process group `pid` leads (every server leads its own)."""
    members = group_members(pid)
    if pid not in members:
        raise AssertionError(f"{pid} does not lead a process group")
    return members


def live(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
