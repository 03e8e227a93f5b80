"""Fault injection with real processes: replicas (fake upstream processes) killed, hung (SIGSTOP), failing and
coming back, and Redis stopped, behind a real gateway process with a real PostgreSQL. Each case checks what
the client sees, the counters on /metrics where they tell the story, and that nothing is lost: every request
has its audit row once the gateway has shut down.

The rest of the fault suite lives beside the features it exercises: PostgreSQL down under load
(test_database_outage.py: exactly one audit row per request), Redis hanging and restarting
(test_redis_infra.py, test_redis_features.py), the client disconnecting mid-stream (test_faults.py: the
upstream sees the cancel within a second).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from services.redis import LocalRedis
from tests.support import processes
from tests.support.catalogs import ADMIN_KEY, chat_entry
from tests.support.gateway import gateway_env, start_gateway
from tests.support.ports import free_port
from tests.support.postgres import fresh_database

ROOT = Path(__file__).resolve().parents[2]
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
# Short intervals so each case takes seconds; the production defaults are in gateway/settings.py.
GATEWAY_ENV = {
    "CITADEL_HEALTH_INTERVAL_S": "0.25",
    "CITADEL_HEALTH_TIMEOUT_S": "0.3",
    "CITADEL_BREAKER_FAILURE_THRESHOLD": "2",
    "CITADEL_BREAKER_COOLDOWN_S": "0.5",
    "CITADEL_BREAKER_MAX_COOLDOWN_S": "1",
    "CITADEL_RETRY_BACKOFF_BASE_S": "0.01",
    "CITADEL_READINESS_CACHE_S": "0",
    "CITADEL_SHUTDOWN_GRACE_S": "10",
    "CITADEL_AUDIT_FLUSH_INTERVAL_S": "0.05",
}


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


@dataclass
class Cluster:
    """Replicas a and b serve `duo`; c serves `solo`; one gateway in front, auditing into its own database."""

    workdir: Path
    db_url: str
    ports: dict[str, int]
    replicas: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    gateway: subprocess.Popen[bytes] | None = None
    url: str = ""
    sent: int = 0

    def start_replica(self, name: str) -> None:
        port = self.ports[name]
        self.replicas[name] = processes.start(
            [sys.executable, "-m", "services.fake_upstream", "--port", str(port), "--slow-s", "5"],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            log=self.workdir / f"replica-{name}.log",
            health_url=f"http://127.0.0.1:{port}/health",
        )

    def kill(self, name: str) -> None:
        processes.stop(self.replicas.pop(name), sig=signal.SIGKILL)

    def signal(self, name: str, sig: int) -> None:
        os.kill(self.replicas[name].pid, sig)

    def start_gateway(self, **env: str) -> None:
        def backends(*names: str) -> str:
            return ",".join(f"http://127.0.0.1:{self.ports[n]}" for n in names)

        models = {
            "duo": chat_entry(backends("a", "b")),
            "duo-paced": chat_entry(backends("a", "b"), upstream_model="paced"),
            "duo-endless": chat_entry(backends("a", "b"), upstream_model="endless"),
            "solo": chat_entry(backends("c")),
            "solo-lazy": {**chat_entry(backends("c"), upstream_model="lazy"), "timeouts": {"first_byte_s": 1}},
        }
        env = gateway_env(self.workdir, models, DATABASE_URL=self.db_url, **GATEWAY_ENV, **env)
        started = start_gateway(self.workdir, env)
        self.gateway, self.url = started.process, started.url

    async def stats(self, name: str) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{self.ports[name]}/_stats")
            return response.json()  # type: ignore[no-any-return]

    async def fault(self, name: str, **fault: Any) -> None:
        async with httpx.AsyncClient() as client:
            await client.post(f"http://127.0.0.1:{self.ports[name]}/_fault", json=fault)

    async def post(
        self, client: httpx.AsyncClient, model: str, *, key: str = ADMIN_KEY, **extra: Any
    ) -> httpx.Response:
        self.sent += 1
        headers = {"Authorization": f"Bearer {key}"}
        return await client.post(f"{self.url}/v1/chat/completions", json=chat(model, **extra), headers=headers)

    async def ready(self, client: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
        response = await client.get(f"{self.url}/health/ready")
        return response.status_code, response.json()

    async def wait_for_replicas(self, client: httpx.AsyncClient, model: str, up: int, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            _, document = await self.ready(client)
            if document["checks"][f"model:{model}"]["detail"].startswith(f"{up} of"):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{model} never had {up} replicas in rotation: {document['checks'][f'model:{model}']}")

    async def metric(self, client: httpx.AsyncClient, name: str, **labels: str) -> float:
        """The sum of a gateway metric's series matching `labels` (0 when it has none yet)."""
        text = (await client.get(f"{self.url}/metrics", headers=HEADERS)).text
        total = 0.0
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            if series.split("{")[0] == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total

    def stop_gateway(self) -> int:
        assert self.gateway is not None
        return processes.stop(self.gateway)

    async def audit_rows(self) -> int:
        engine = create_async_engine(self.db_url)
        async with engine.connect() as conn:
            count = (await conn.execute(text("SELECT count(*) FROM llm.audit_log WHERE kind = 'api'"))).scalar()
        await engine.dispose()
        return int(count or 0)


@pytest.fixture
async def cluster(tmp_path: Path, postgres_url: str) -> AsyncIterator[Cluster]:
    async with fresh_database(postgres_url, prefix="resilience") as db_url:
        ports = {name: free_port() for name in ("a", "b", "c")}
        cluster = Cluster(workdir=tmp_path, db_url=db_url, ports=ports)
        try:
            for name in ("a", "b", "c"):
                cluster.start_replica(name)
            cluster.start_gateway()
            yield cluster
            # Nothing lost: the gateway's graceful stop flushed every request's audit row. (uvicorn ends a
            # graceful SIGTERM shutdown by re-raising the signal: -SIGTERM is its clean exit status.)
            assert cluster.stop_gateway() == -signal.SIGTERM
            assert await cluster.audit_rows() == cluster.sent
        finally:
            if cluster.gateway is not None:
                processes.stop(cluster.gateway, sig=signal.SIGKILL)
            for process in cluster.replicas.values():
                os.kill(process.pid, signal.SIGCONT)
                processes.stop(process, sig=signal.SIGKILL)


async def test_requests_spread_over_replicas_and_survive_one_killed_mid_stream(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        statuses = [(await cluster.post(client, "duo")).status_code for _ in range(20)]
        assert statuses == [200] * 20
        a, b = (await cluster.stats("a"))["requests"], (await cluster.stats("b"))["requests"]
        assert a >= 5 and b >= 5, f"least-outstanding with random ties shares the load: a={a}, b={b}"

        cluster.sent += 1
        async with client.stream(
            "POST", f"{cluster.url}/v1/chat/completions", json=chat("duo-endless", stream=True), headers=HEADERS
        ) as stream:
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("data: {")
            # Whichever replica has the stream dies mid-way.
            victim = "a" if (await cluster.stats("a"))["requests"] > a else "b"
            cluster.kill(victim)
            rest = [line async for line in lines if line]
        assert '"error"' in rest[-2] and rest[-1] == "data: [DONE]", rest[-3:]

        # The survivor takes everything: requests to the dead one are retried there (connection refused).
        statuses = [(await cluster.post(client, "duo")).status_code for _ in range(20)]
        assert statuses == [200] * 20
        status, document = await cluster.ready(client)
        assert status == 200 and document["status"] == "degraded"
        assert document["checks"]["model:duo"]["detail"] == "1 of 2 replicas in rotation"
        assert document["checks"]["model:solo"]["status"] == "healthy"


async def test_a_hanging_replica_times_out_then_leaves_rotation(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        cluster.signal("a", signal.SIGSTOP)  # accepts connections (the kernel does), never answers
        await cluster.wait_for_replicas(client, "duo", up=1)
        statuses = [(await cluster.post(client, "duo")).status_code for _ in range(20)]
        assert statuses == [200] * 20, "the prober took the hung replica out: nobody waits on it"
        cluster.signal("a", signal.SIGCONT)
        await cluster.wait_for_replicas(client, "duo", up=2)


async def test_a_first_byte_timeout_answers_504_and_cancels_the_upstream(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        started = time.monotonic()
        response = await cluster.post(client, "solo-lazy", stream=True)
        waited = time.monotonic() - started
        assert response.status_code == 504 and response.json()["error"]["type"] == "timeout"
        assert "solo-lazy" in response.json()["error"]["message"]
        assert waited < 4, f"the model's own first-byte timeout (1 s) applies, not the default: {waited:.1f} s"
        await asyncio.sleep(0.5)
        assert (await cluster.stats("c"))["cancelled_streams"] == 1, "the upstream request was dropped"


async def test_a_replica_answering_500s_is_cut_off_by_its_breaker(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await cluster.fault("a", status=500)
        responses = [await cluster.post(client, "duo") for _ in range(30)]
        failed = [r for r in responses if r.status_code != 200]
        # A 500 may have done work, so it is not retried: the client sees it, until the breaker opens (2).
        assert len(failed) <= 2, [r.status_code for r in failed]
        assert all(r.status_code == 500 and "injected" not in r.text for r in failed)
        errors = await cluster.metric(client, "citadel_llm_upstream_errors_total", model="duo", kind="status_5xx")
        assert errors == len(failed), "each 500 counted once, none retried"
        _, document = await cluster.ready(client)
        breakers = {r["breaker"] for r in document["checks"]["model:duo"]["replicas"]}
        assert breakers & {"open", "half_open"}, document["checks"]["model:duo"]

        # Healed: after the cool-down a trial request closes the breaker and a gets traffic again.
        await cluster.fault("a", status=None)
        await asyncio.sleep(1.2)
        before = (await cluster.stats("a"))["requests"]
        statuses = [(await cluster.post(client, "duo")).status_code for _ in range(20)]
        assert statuses == [200] * 20
        assert (await cluster.stats("a"))["requests"] > before


async def test_a_503_from_a_replica_is_retried_on_the_other(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await cluster.fault("a", status=503)
        statuses = [(await cluster.post(client, "duo")).status_code for _ in range(20)]
        assert statuses == [200] * 20, "502/503/504 are safe to send again, and b is there"
        retries = await cluster.metric(client, "citadel_llm_upstream_retries_total", model="duo", reason="status_503")
        failures = await cluster.metric(client, "citadel_llm_upstream_errors_total", model="duo", kind="status_5xx")
        assert retries == failures >= 1, "every 503 was retried once, on b"


async def test_all_replicas_down_is_a_quick_503_naming_the_model_and_others_keep_working(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        cluster.kill("a")
        cluster.kill("b")
        for _ in range(5):
            started = time.monotonic()
            response = await cluster.post(client, "duo")
            assert time.monotonic() - started < 2, "no waiting on dead hosts"
            error = response.json()["error"]
            assert response.status_code == 503 and "'duo'" in error["message"], error
            assert "127.0.0.1" not in error["message"]
        assert (await cluster.post(client, "solo")).status_code == 200
        status, document = await cluster.ready(client)
        assert status == 200 and document["checks"]["model:duo"]["status"] == "unhealthy"
        assert await cluster.metric(client, "citadel_llm_replica_up", model="duo") == 0
        assert await cluster.metric(client, "citadel_llm_replica_up", model="solo") == 1


async def test_a_replica_that_comes_back_returns_to_rotation(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        cluster.kill("a")
        await cluster.wait_for_replicas(client, "duo", up=1)
        cluster.start_replica("a")
        await cluster.wait_for_replicas(client, "duo", up=2)
        statuses = [(await cluster.post(client, "duo")).status_code for _ in range(20)]
        assert statuses == [200] * 20
        assert (await cluster.stats("a"))["requests"] > 0, "the new process got its share"


async def test_sigterm_lets_a_stream_finish_refuses_new_requests_and_flushes_the_audit(cluster: Cluster) -> None:
    assert cluster.gateway is not None
    async with httpx.AsyncClient(timeout=30) as client:
        cluster.sent += 1
        async with client.stream(
            "POST", f"{cluster.url}/v1/chat/completions", json=chat("duo-paced", stream=True), headers=HEADERS
        ) as stream:
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("data: {")
            cluster.gateway.send_signal(signal.SIGTERM)  # ~2 s of the stream still to come
            await asyncio.sleep(0.3)
            with pytest.raises(httpx.ConnectError):
                await client.get(f"{cluster.url}/health")
            rest = [line async for line in lines if line]
        assert rest[-1] == "data: [DONE]" and not any('"error"' in line for line in rest)
        assert len(rest) >= 20, "every event of the stream arrived"
    assert cluster.gateway.wait(timeout=15) == -signal.SIGTERM
    assert "Finished server process" in (cluster.workdir / "gateway.log").read_text()


async def test_redis_down_fails_open_loses_nothing_and_is_reported(cluster: Cluster, tmp_path: Path) -> None:
    redis = LocalRedis(free_port(), data_dir=tmp_path / "redis")
    redis.start()
    try:
        cluster.stop_gateway()
        cluster.start_gateway(REDIS_URL=redis.url)
        async with httpx.AsyncClient(timeout=10) as client:
            # A user key: limits apply to it (the bootstrap admin key is unlimited and never asks Redis).
            created = await client.post(
                f"{cluster.url}/admin/keys", json={"name": "limited", "role": "user"}, headers=HEADERS
            )
            cluster.sent += 1  # an API request like the others (its admin action has a row of its own)
            key = created.json()["key"]
            up = [await cluster.post(client, "duo", key=key) for _ in range(5)]
            assert all(r.status_code == 200 and "x-ratelimit-limit-tokens" in r.headers for r in up)
            redis.stop()
            down = [await cluster.post(client, "duo", key=key) for _ in range(20)]
            # Limits fail open (the default policy): answers go on, without rate-limit headers.
            assert [r.status_code for r in down] == [200] * 20
            assert not any("x-ratelimit-limit-tokens" in r.headers for r in down)
            assert await cluster.metric(client, "citadel_llm_redis_failures_total", group="limits") > 0
            status, document = await cluster.ready(client)
            assert status == 200 and document["status"] == "degraded"
            assert document["checks"]["redis"]["status"] == "unhealthy"
    finally:
        redis.stop()
