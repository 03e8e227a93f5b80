"""Integration fixtures: the fake upstream process, a gateway process in front of it (each fault has a model
name of its own), and an in-process gateway with a real PostgreSQL."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from gateway.app import create_app
from tests.conftest import free_port, make_settings
from tests.support import processes
from tests.support.catalogs import ADMIN_KEY, chat_entry, write_models_file

ROOT = Path(__file__).resolve().parents[2]
FAULT_MODELS = ["fail500", "bad400", "malformed", "slow", "cut", "nodone", "endless"]


@dataclass
class Servers:
    gateway_url: str
    upstream_url: str


@pytest.fixture(scope="session")
def fake_upstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fake OpenAI upstream process (fault injection by model name)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    upstream = processes.start(
        [sys.executable, "-m", "services.fake_upstream", "--port", str(port), "--slow-s", "3"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        log=tmp_path_factory.mktemp("upstream") / "upstream.log",
        health_url=f"{url}/health",
    )
    try:
        yield url
    finally:
        processes.stop(upstream)


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory, fake_upstream_url: str) -> Iterator[Servers]:
    """A real gateway process (no database) in front of the fake upstream."""
    workdir = tmp_path_factory.mktemp("integration")
    gateway_port, dead_port = free_port(), free_port()
    upstream_url = fake_upstream_url
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
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
        # One upstream process plays every fault here: its breaker must not open on the faults these tests
        # provoke on purpose (breakers have their own tests in test_resilience.py).
        "CITADEL_BREAKER_FAILURE_THRESHOLD": "1000000",
        "CITADEL_MAX_BODY_BYTES": "65536",
        "CITADEL_AUDIT_SPOOL_DIR": str(workdir / "audit-spool"),
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


@dataclass
class DbGateway:
    """A gateway in process, with a real PostgreSQL, in front of the fake upstream."""

    client: httpx.AsyncClient
    app: FastAPI
    upstream_url: str

    def headers(self, key: str = ADMIN_KEY, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}", **extra}

    async def create_key(self, **fields: object) -> dict[str, object]:
        response = await self.client.post("/admin/keys", json=fields, headers=self.headers())
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]


@pytest.fixture
async def db_gateway(tmp_path: Path, postgres_url: str, fake_upstream_url: str) -> AsyncIterator[DbGateway]:
    async with running_db_gateway(tmp_path, postgres_url, fake_upstream_url) as gateway:
        yield gateway


@asynccontextmanager
async def running_db_gateway(
    tmp_path: Path,
    postgres_url: str,
    fake_upstream_url: str,
    *,
    models: dict[str, dict[str, object]] | None = None,
    **overrides: object,
) -> AsyncIterator[DbGateway]:
    """An in-process gateway with a real PostgreSQL; `models` replaces the default catalogue (ok, other, tiny)."""
    models = models or {
        "ok": chat_entry(fake_upstream_url, upstream_model="upstream-ok"),
        "other": chat_entry(fake_upstream_url),
        "tiny": chat_entry(fake_upstream_url, max_tokens=64),
    }
    settings = make_settings(
        write_models_file(tmp_path / "models.yaml", models),
        database_url=postgres_url,
        audit_spool_dir=tmp_path / "spool",
        audit_flush_interval_s=0.05,
        **overrides,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=10) as client:
            yield DbGateway(client=client, app=app, upstream_url=fake_upstream_url)
