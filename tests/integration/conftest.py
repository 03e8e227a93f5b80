"""A real gateway process in front of the fake upstream process; each fault has a model name of its own."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.support import processes
from tests.support.catalogs import ADMIN_KEY, chat_entry, write_models_file

ROOT = Path(__file__).resolve().parents[2]
FAULT_MODELS = ["fail500", "bad400", "malformed", "slow", "cut", "nodone", "endless"]


@dataclass
class Servers:
    gateway_url: str
    upstream_url: str


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    workdir = tmp_path_factory.mktemp("integration")
    upstream_port, gateway_port, dead_port = free_port(), free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    upstream = processes.start(
        [sys.executable, "-m", "services.fake_upstream", "--port", str(upstream_port), "--slow-s", "3"],
        env=env,
        cwd=ROOT,
        log=workdir / "upstream.log",
        health_url=f"{upstream_url}/health",
    )
    models = {name: chat_entry(upstream_url) for name in FAULT_MODELS}
    models["ok"] = chat_entry(upstream_url, upstream_model="upstream-ok")
    models["bad400-renamed"] = chat_entry(upstream_url, upstream_model="bad400")
    models["refused"] = chat_entry(f"http://127.0.0.1:{dead_port}")
    models["emb"] = {**chat_entry(upstream_url, upstream_model="upstream-emb"), "kind": "embedding"}
    gateway_env = {
        **env,
        "CITADEL_ADMIN_KEY": ADMIN_KEY,
        "CITADEL_CONFIG_PATH": str(write_models_file(workdir / "models.yaml", models)),
        "CITADEL_PROFILE": "",
        "CITADEL_UPSTREAM_READ_TIMEOUT_S": "1",
        "CITADEL_MAX_BODY_BYTES": "65536",
    }
    # cwd is the temp dir, so the developer's .env is not read.
    gateway = processes.start(
        [sys.executable, "-m", "gateway", "serve", "--port", str(gateway_port)],
        env=gateway_env,
        cwd=workdir,
        log=workdir / "gateway.log",
        health_url=f"http://127.0.0.1:{gateway_port}/health",
    )
    try:
        yield Servers(gateway_url=f"http://127.0.0.1:{gateway_port}", upstream_url=upstream_url)
    finally:
        processes.stop(gateway)
        processes.stop(upstream)
