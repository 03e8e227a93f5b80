"""The real stack (vLLM CPU servers + gateway), started exactly as `make run` starts it, on its own ports.

Teardown sends SIGINT (what Ctrl-C does) and checks the runner stopped every process it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import free_port
from tests.support import logscan, processes
from tests.support.catalogs import ADMIN_KEY
from tests.support.supervised_stack import stack_environment

ROOT = Path(__file__).resolve().parents[2]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ports = {name: free_port() for name in ("gateway", "demo-chat", "embed", "postgres", "redis")}
    workdir = tmp_path_factory.mktemp("e2e")
    # Its own PostgreSQL data, demo model and logs: a `make run` stack may be up beside it.
    # Not under pytest's temporary folder: run as root, PostgreSQL's own user must traverse its parents, and
    # any other pytest session that starts takes that access away from /tmp/pytest-of-root.
    cache = Path(tempfile.mkdtemp(prefix="citadel-e2e-cache-"))
    env = stack_environment(ports, cache=cache, admin_key=ADMIN_KEY)
    log = workdir / "stack.log"
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
        yield url
    finally:
        # Ctrl-C: the runner must stop the gateway and both model servers, then exit 0.
        os.kill(runner.pid, signal.SIGINT)
        try:
            code = runner.wait(timeout=60)
        except subprocess.TimeoutExpired:
            processes.stop(runner, sig=signal.SIGKILL)
            detail = log.read_text()[-3000:]
            raise AssertionError(f"the stack did not stop within 60 s of Ctrl-C; log:\n{detail}") from None
        assert code == 0, log.read_text()[-3000:]
        still_up = [name for name, port in ports.items() if _listening(port)]
        assert not still_up, f"still listening after Ctrl-C: {still_up}"
        logscan.keep_log(cache / "logs" / "gateway.log", workdir)  # for the session's log scan
        shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="session")
def client(gateway_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)
