"""Live configuration end to end: config/models.yaml rewritten under a running gateway, then POST /admin/reload or
SIGHUP, in front of fake upstream processes (two replicas, `a` and `b`).

In process (the app's own pool and state can be inspected): a replica added gets traffic; a replica removed
while a stream runs on it lets the stream finish and takes no new request; max_tokens, timeouts and prices
apply to the next request; a new model is served and a removed one is 404; a bad file is refused with 400 and
the old configuration keeps serving. Real gateway processes: SIGHUP to one worker, SIGHUP to the master of two
workers (each reloads), and two workers with Redis (a reload on one reaches the other).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.app import create_app
from gateway.reload import CHANNEL
from gateway.services import services_of
from tests.conftest import make_settings
from tests.integration.conftest import DbGateway
from tests.support import processes
from tests.support.catalogs import ADMIN_KEY, chat_entry, write_models_file
from tests.support.gateway import GatewayProcess, gateway_env, running_gateway, wait_for_startups
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
# Gateway processes on a busy machine: a slow health probe must not take the fake upstream out of rotation (what is
# tested is the reload), nor a slow Redis call fail the rate limits open or closed.
PATIENT = {"CITADEL_HEALTH_TIMEOUT_S": "5", "CITADEL_REDIS_TIMEOUT_MS": "2000"}


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def label(url: str) -> str:
    return url.removeprefix("http://")


@pytest.fixture(scope="module")
def replica_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second fake upstream process (the session's `fake_upstream_url` is replica a)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = processes.start(
        [sys.executable, "-m", "services.fake_upstream", "--port", str(port), "--slow-s", "3"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        log=tmp_path_factory.mktemp("replica-b") / "upstream.log",
        health_url=f"{url}/health",
    )
    try:
        yield url
    finally:
        processes.stop(process)


async def upstream_requests(url: str) -> int:
    async with httpx.AsyncClient() as client:
        return int((await client.get(f"{url}/_stats")).json()["requests"])


async def upstream_stats(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{url}/_stats")).json()  # type: ignore[no-any-return]


@dataclass
class Live:
    """An in-process gateway over a models file that the test rewrites."""

    app: FastAPI
    client: httpx.AsyncClient
    models_file: Path
    a: str
    b: str

    def write(self, models: dict[str, dict[str, object]]) -> None:
        write_models_file(self.models_file, models)

    async def reload(self, models: dict[str, dict[str, object]] | None = None) -> httpx.Response:
        if models is not None:
            self.write(models)
        return await self.client.post("/admin/reload", headers=HEADERS)

    async def chat(self, model: str, **extra: Any) -> httpx.Response:
        return await self.client.post("/v1/chat/completions", json=chat(model, **extra), headers=HEADERS)

    @property
    def pool(self) -> Any:
        return services_of(self.app).pool


@pytest.fixture
async def live(tmp_path: Path, fake_upstream_url: str, replica_b: str) -> AsyncIterator[Live]:
    models_file = write_models_file(tmp_path / "models.yaml", {"m": chat_entry(fake_upstream_url)})
    settings = make_settings(models_file, health_interval_s=0.5, health_timeout_s=2)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=20) as client:
            yield Live(app=app, client=client, models_file=models_file, a=fake_upstream_url, b=replica_b)


async def test_a_replica_added_gets_traffic(live: Live) -> None:
    response = await live.reload({"m": chat_entry(f"{live.a},{live.b}")})
    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["replicas_added"] == [label(live.b)] and summary["replicas_removed"] == []
    assert summary["models_changed"] == {"m": ["backends"]}
    assert summary["workers_notified"] is None  # no Redis: this worker only
    before = await upstream_requests(live.b)
    answers = [await live.chat("m") for _ in range(20)]
    assert all(a.status_code == 200 for a in answers)
    assert await upstream_requests(live.b) > before, "the new replica takes its share"
    ready = (await live.client.get("/health/ready")).json()
    assert ready["checks"]["model:m"]["detail"] == "2 of 2 replicas in rotation"


async def test_a_replica_removed_during_a_stream_lets_it_finish_and_takes_no_new_request(live: Live) -> None:
    live.write({"m": chat_entry(live.a), "m-paced": chat_entry(live.a, upstream_model="paced")})
    assert (await live.reload()).status_code == 200
    [replica_a] = live.pool._by_model["m-paced"]
    cancelled_before = (await upstream_stats(live.a))["cancelled_streams"]
    stream = asyncio.create_task(live.chat("m-paced", stream=True))  # 20 events, 100 ms apart
    for _ in range(100):
        if replica_a.outstanding:
            break
        await asyncio.sleep(0.02)
    assert replica_a.outstanding == 1, "the stream is in flight on replica a"

    response = await live.reload({"m": chat_entry(live.b), "m-paced": chat_entry(live.b, upstream_model="paced")})
    assert response.status_code == 200, response.text
    assert response.json()["replicas_removed"] == [label(live.a)]
    assert live.pool.draining == [replica_a] and not stream.done()
    a_before, b_before = await upstream_requests(live.a), await upstream_requests(live.b)
    assert [(await live.chat("m")).status_code for _ in range(5)] == [200] * 5
    assert await upstream_requests(live.a) == a_before, "no new request reaches the removed replica"
    assert await upstream_requests(live.b) == b_before + 5

    answer = await stream
    assert answer.status_code == 200
    events = [line for line in answer.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and all('"error"' not in e for e in events)
    assert sum('"t' in e for e in events) == 20, "every event of the stream arrived"
    assert (await upstream_stats(live.a))["cancelled_streams"] == cancelled_before
    for _ in range(30):
        if not live.pool.draining:
            break
        await asyncio.sleep(0.1)
    assert live.pool.draining == [] and replica_a.session.closed, "closed once its stream ended"


async def test_max_tokens_timeouts_and_prices_apply_to_the_next_request(live: Live) -> None:
    live.write({"m": chat_entry(live.a, max_tokens=64), "slow": chat_entry(live.a, upstream_model="slow")})
    assert (await live.reload()).status_code == 200
    refused = await live.chat("m", max_tokens=100)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "max_tokens_exceeded"

    priced = {**chat_entry(live.a, max_tokens=128), "price_per_1k_prompt_tokens": 2.0}
    slow = {**chat_entry(live.a, upstream_model="slow"), "timeouts": {"first_byte_s": 0.5}}
    response = await live.reload({"m": priced, "slow": slow})
    assert response.json()["models_changed"] == {
        "m": ["max_model_len", "max_tokens", "price_per_1k_prompt_tokens"],
        "slow": ["timeouts"],
    }
    cost_before = REGISTRY.get_sample_value("citadel_llm_cost_total", {"model": "m"}) or 0.0
    assert (await live.chat("m", max_tokens=100)).status_code == 200
    cost = REGISTRY.get_sample_value("citadel_llm_cost_total", {"model": "m"}) or 0.0
    assert cost - cost_before == pytest.approx(5 * 2.0 / 1000)  # the fake reports 5 prompt tokens
    card = (await live.client.get("/v1/models/m", headers=HEADERS)).json()
    assert card["max_tokens"] == 128
    started = time.monotonic()
    timed_out = await live.chat("slow")  # the upstream waits 3 s: over the new first-byte bound
    assert timed_out.status_code == 504 and time.monotonic() - started < 2.5

    assert (await live.reload({"m": chat_entry(live.a, max_tokens=32)})).status_code == 200
    assert (await live.chat("m", max_tokens=64)).status_code == 400


async def test_a_new_model_is_served_and_a_removed_one_answers_404(live: Live) -> None:
    response = await live.reload({"fresh": chat_entry(live.a, upstream_model="upstream-fresh")})
    assert response.status_code == 200
    assert response.json()["models_added"] == ["fresh"] and response.json()["models_removed"] == ["m"]
    listing = (await live.client.get("/v1/models", headers=HEADERS)).json()
    assert [card["id"] for card in listing["data"]] == ["fresh"]
    answer = await live.chat("fresh")
    assert answer.status_code == 200 and answer.json()["model"] == "fresh"
    gone = await live.chat("m")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    checks = (await live.client.get("/health/ready")).json()["checks"]
    assert "model:fresh" in checks and "model:m" not in checks
    assert [row["model"] for row in services_of(live.app).status_board.data()["models"]] == ["fresh"]


async def test_a_bad_file_is_refused_and_the_old_configuration_keeps_serving(live: Live) -> None:
    def invalid_count() -> float:
        return REGISTRY.get_sample_value("citadel_llm_config_reloads_total", {"result": "invalid"}) or 0.0

    before = invalid_count()
    live.models_file.write_text("models: [unclosed\n")
    refused = await live.reload()
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "invalid_config" and "not valid YAML" in error["message"]
    assert (await live.chat("m")).status_code == 200, "still serving the old configuration"

    broken = {**chat_entry(live.b), "max_tokens": 0}
    refused = await live.reload({"m": broken, "new": chat_entry(live.b)})
    assert refused.status_code == 400 and "max_tokens" in refused.json()["error"]["message"]
    assert invalid_count() == before + 2
    assert [card["id"] for card in (await live.client.get("/v1/models", headers=HEADERS)).json()["data"]] == ["m"]
    assert [r.url for r in live.pool._by_model["m"]] == [live.a], "no replica was touched"

    assert (await live.reload({"m": chat_entry(live.a), "new": chat_entry(live.b)})).status_code == 200
    assert (await live.chat("new")).status_code == 200


async def test_only_admins_may_reload(live: Live) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}):
        assert (await live.client.post("/admin/reload", headers=headers)).status_code == 401


# --- real gateway processes: SIGHUP, and several workers ----------------------------------------------------------


@contextmanager
def two_workers(workdir: Path, env: dict[str, str]) -> Iterator[GatewayProcess]:
    """`citadel serve --workers 2`, with time to start: each worker builds its app (seconds on a busy machine)."""
    port = free_port()
    log = workdir / "gateway.log"
    process = processes.start(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        cwd=workdir,
        log=log,
        health_url=f"http://127.0.0.1:{port}/health",
        timeout_s=120,
    )
    try:
        wait_for_startups(log, 2, timeout_s=120)
        yield GatewayProcess(process=process, url=f"http://127.0.0.1:{port}", log=log)
    finally:
        processes.stop(process)


def applied(log: Path, trigger: str) -> list[dict[str, Any]]:
    """The gateway's log lines of applied reloads from `trigger` (one per worker)."""
    lines = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and f"config reload ({trigger}) applied" in line:
            lines.append(orjson.loads(line))
    return lines


async def wait_for(check: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def all_answer(url: str, model: str, count: int = 40) -> list[int]:
    """`count` concurrent requests, each on a new connection (so both workers get some)."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=20) as client:
        answers = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=chat(model), headers=HEADERS) for _ in range(count))
        )
    return [answer.status_code for answer in answers]


async def test_sighup_reloads_a_single_worker_gateway_and_keeps_it_on_a_bad_file(
    tmp_path: Path, fake_upstream_url: str
) -> None:
    env = gateway_env(tmp_path, {"m": chat_entry(fake_upstream_url)}, **PATIENT)
    with running_gateway(tmp_path, env) as gateway:
        write_models_file(
            tmp_path / "models.yaml", {"m": chat_entry(fake_upstream_url), "fresh": chat_entry(fake_upstream_url)}
        )
        os.kill(gateway.process.pid, signal.SIGHUP)
        await wait_for(lambda: applied(gateway.log, "SIGHUP"))
        assert await all_answer(gateway.url, "fresh", 5) == [200] * 5

        (tmp_path / "models.yaml").write_text("models: {fresh: {kind: chat}}\n")
        os.kill(gateway.process.pid, signal.SIGHUP)
        await wait_for(lambda: "config reload (SIGHUP) refused" in gateway.log.read_text())
        assert gateway.process.poll() is None, "SIGHUP does not end the gateway"
        assert await all_answer(gateway.url, "m", 5) == [200] * 5


async def test_sighup_to_the_master_reloads_every_worker(tmp_path: Path, fake_upstream_url: str) -> None:
    env = gateway_env(tmp_path, {"m": chat_entry(fake_upstream_url)}, **PATIENT)
    with two_workers(tmp_path, env) as gateway:
        workers = await worker_pids(gateway)
        write_models_file(tmp_path / "models.yaml", {"fresh": chat_entry(fake_upstream_url)})
        os.kill(gateway.process.pid, signal.SIGHUP)
        await wait_for(lambda: len(applied(gateway.log, "SIGHUP")) == 2)
        assert {line["pid"] for line in applied(gateway.log, "SIGHUP")} == workers, "each worker, in place"
        assert await all_answer(gateway.url, "fresh") == [200] * 40
        assert "restarting processes" not in gateway.log.read_text()


async def worker_pids(gateway: GatewayProcess) -> set[int]:
    pids = set()
    for line in gateway.log.read_text().splitlines():
        if line.startswith("{") and "Application startup complete" in line:
            pids.add(int(orjson.loads(line)["pid"]))
    return pids


async def test_with_redis_a_reload_on_one_worker_reaches_the_other(
    tmp_path: Path, fake_upstream_url: str, redis_url: str, redis_client: Redis
) -> None:
    env = gateway_env(tmp_path, {"m": chat_entry(fake_upstream_url)}, REDIS_URL=redis_url, **PATIENT)
    with two_workers(tmp_path, env) as gateway:

        async def listeners() -> int:
            return int(dict(await redis_client.pubsub_numsub(CHANNEL)).get(CHANNEL.encode(), 0))

        deadline = time.monotonic() + 15
        while await listeners() < 2:
            assert time.monotonic() < deadline, "both workers subscribe"
            await asyncio.sleep(0.1)
        write_models_file(
            tmp_path / "models.yaml", {"m": chat_entry(fake_upstream_url), "fresh": chat_entry(fake_upstream_url)}
        )
        async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
            response = await client.post("/admin/reload", headers=HEADERS)
        assert response.status_code == 200, response.text
        assert response.json()["models_added"] == ["fresh"] and response.json()["workers_notified"] == 1
        await wait_for(lambda: applied(gateway.log, "redis"))
        [by_admin], [by_redis] = applied(gateway.log, "admin"), applied(gateway.log, "redis")
        assert {by_admin["pid"], by_redis["pid"]} == await worker_pids(gateway)
        assert await all_answer(gateway.url, "fresh") == [200] * 40


async def test_with_a_database_the_new_models_are_recorded_and_the_reload_is_audited(
    db_gateway: DbGateway, tmp_path: Path, postgres_url: str
) -> None:
    url = db_gateway.upstream_url
    write_models_file(
        tmp_path / "models.yaml",
        {
            "ok": chat_entry(url, upstream_model="upstream-ok"),
            "tiny": chat_entry(url, max_tokens=32),
            "added": chat_entry(url),
        },
    )
    response = await db_gateway.client.post("/admin/reload", headers=db_gateway.headers())
    assert response.status_code == 200, response.text
    assert response.json()["models_removed"] == ["other"]
    engine = create_async_engine(postgres_url)
    try:
        for _ in range(100):
            async with engine.connect() as conn:
                models = {row["name"]: row for row in (await conn.execute(text("SELECT * FROM llm.models"))).mappings()}
                audited = (
                    (
                        await conn.execute(
                            text("SELECT target FROM llm.audit_log WHERE kind = 'admin' AND action = 'config.reload'")
                        )
                    )
                    .scalars()
                    .all()
                )
            # The shared database may hold other tests' reload rows: wait for this reload's own.
            if any("models added: added" in target for target in audited):
                break
            await asyncio.sleep(0.05)
    finally:
        await engine.dispose()
    assert models["added"]["backends"] == [url] and models["tiny"]["max_tokens"] == 32
    assert any("models added: added" in target and "models removed: other" in target for target in audited)
