"""Batches seen from outside, against a real PostgreSQL and the fake upstream: a batch run to completion shows on the
status page (validating, then in_progress with its counts, then gone) to its owner and an admin but not to another
key, and in the metrics (runner leadership, batches by status, pending lines, lines done); the public page shows the
count only, and no page shows a batch's metadata."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.batch.files import store_file
from gateway.batch.runner import BatchRunner
from gateway.services import services_of
from gateway.store.db import asyncpg_dsn
from tests.integration.conftest import DbGateway, running_db_gateway
from tests.support.catalogs import ADMIN_KEY, chat_entry

pytestmark = pytest.mark.asyncio
CHAT = "/v1/chat/completions"
LINES = 4  # 3 s each at the `slow` model: long enough to see the batch running
SECRET = "eval-of-project-x"  # metadata: never on the status page


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, postgres_url: str, upstream: str, **overrides: object) -> AsyncIterator[DbGateway]:
    """A gateway whose own runner is off (the test starts one), with a model that answers in 3 s."""
    models = {"slow": chat_entry(upstream, upstream_model="slow")}
    settings: dict[str, Any] = {"batch_enabled": False, "batch_poll_s": 0.05, "batch_concurrency": LINES}
    async with running_db_gateway(tmp_path, postgres_url, upstream, models=models, **settings, **overrides) as gw:
        yield gw


@contextlib.asynccontextmanager
async def runner(gw: DbGateway, postgres_url: str) -> AsyncIterator[BatchRunner]:
    services = services_of(gw.app)
    batch_runner = BatchRunner(
        services=services, app=gw.app, dsn=asyncpg_dsn(postgres_url), settings=services.settings.batch
    )
    async with batch_runner.running():
        yield batch_runner


async def new_batch(gw: DbGateway) -> tuple[str, str]:
    """A user key and a batch of LINES chat lines it created (with metadata): (key, batch id)."""
    created = await gw.create_key(name=f"obs-{uuid.uuid4().hex[:8]}", role="user")
    key, key_id = str(created["key"]), uuid.UUID(str(created["id"]))
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
    lines = [{"custom_id": f"req-{n}", "method": "POST", "url": CHAT, "body": body} for n in range(LINES)]
    data = b"\n".join(orjson.dumps(line) for line in lines) + b"\n"
    stored = await store_file(
        services_of(gw.app).db_sessions, key_id=key_id, purpose="batch", filename="in.jsonl", data=data
    )
    request = {"input_file_id": stored.id, "endpoint": CHAT, "completion_window": "24h", "metadata": {"p": SECRET}}
    answer = await gw.client.post("/v1/batches", json=request, headers=gw.headers(key))
    assert answer.status_code == 200, answer.text
    return key, str(answer.json()["id"])


async def batches_on_page(gw: DbGateway, key: str | None) -> dict[str, Any]:
    headers = gw.headers(key) if key is not None else {}
    answer = await gw.client.get("/status/data", headers=headers)
    assert answer.status_code == 200, answer.text
    assert SECRET not in answer.text
    section: dict[str, Any] = answer.json()["batches"]
    return section


def listed(section: dict[str, Any], batch_id: str) -> dict[str, Any] | None:
    return next((batch for batch in section["batches"] if batch["id"] == batch_id), None)


async def metrics(gw: DbGateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = await gw.client.get("/metrics", headers=gw.headers())
    found = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name.startswith("citadel_llm_batch"):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def metric(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def until(check: Callable[[], Any], timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := await check()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
    return result


async def test_a_batch_run_to_completion_on_the_status_page_and_in_the_metrics(
    tmp_path: Path, postgres_url: str, fake_upstream_url: str
) -> None:
    async with gateway(tmp_path, postgres_url, fake_upstream_url) as gw:
        owner, batch_id = await new_batch(gw)
        stranger = str((await gw.create_key(name=f"obs-{uuid.uuid4().hex[:8]}", role="user"))["key"])
        before = await metrics(gw)
        assert metric(before, "citadel_llm_batch_runner_leader") == 0

        # Before any runner: validating, for its owner and an admin; another key sees the count, not the batch.
        admin_view, owner_view = await batches_on_page(gw, ADMIN_KEY), await batches_on_page(gw, owner)
        assert admin_view["available"] and admin_view["scope"] == "all" and admin_view["running"] >= 1
        assert owner_view["scope"] == "own" and [b["id"] for b in owner_view["batches"]] == [batch_id]
        assert owner_view["batches"][0] == {
            "id": batch_id,
            "endpoint": CHAT,
            "status": "validating",
            "completed": 0,
            "failed": 0,
            "total": 0,
            "created_at": owner_view["batches"][0]["created_at"],
        }
        assert listed(admin_view, batch_id) == owner_view["batches"][0]
        stranger_view = await batches_on_page(gw, stranger)
        assert stranger_view["scope"] == "own" and listed(stranger_view, batch_id) is None
        assert stranger_view["running"] == admin_view["running"]

        async with runner(gw, postgres_url):

            async def running() -> dict[str, Any] | None:
                found = listed(await batches_on_page(gw, owner), batch_id)
                return found if found and found["status"] == "in_progress" else None

            during = await until(running)
            assert during["total"] == LINES and during["completed"] < LINES

            async def leading() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
                found = await metrics(gw)
                ok = metric(found, "citadel_llm_batches", status="in_progress") >= 1
                ok = ok and metric(found, "citadel_llm_batch_lines_pending") >= 1
                return found if ok else None

            now = await until(leading)
            assert metric(now, "citadel_llm_batch_runner_leader") == 1

            async def finished() -> bool:
                batch = (await gw.client.get(f"/v1/batches/{batch_id}", headers=gw.headers(owner))).json()
                assert batch["status"] in ("validating", "in_progress", "finalizing", "completed"), batch
                return batch["status"] == "completed"

            await until(finished)
            assert listed(await batches_on_page(gw, ADMIN_KEY), batch_id) is None
            after = await metrics(gw)
            done = metric(after, "citadel_llm_batch_lines_total", endpoint="chat", outcome="done")
            assert done - metric(before, "citadel_llm_batch_lines_total", endpoint="chat", outcome="done") == LINES

            async def counted() -> bool:
                return metric(await metrics(gw), "citadel_llm_batches", status="completed") >= 1

            await until(counted)
        # The runner stopped: this process leads no more and its counts are back to 0.
        stopped = await metrics(gw)
        assert metric(stopped, "citadel_llm_batch_runner_leader") == 0
        assert metric(stopped, "citadel_llm_batches", status="completed") == 0


async def test_the_public_page_shows_how_many_batches_run_but_not_which(
    tmp_path: Path, postgres_url: str, fake_upstream_url: str
) -> None:
    async with gateway(tmp_path, postgres_url, fake_upstream_url, status_page_public=True) as gw:
        _, batch_id = await new_batch(gw)
        answer = await gw.client.get("/status/data")
        assert answer.status_code == 200
        assert batch_id not in answer.text and SECRET not in answer.text
        section = answer.json()["batches"]
        assert section["available"] and section["scope"] == "none" and section["running"] >= 1
        assert section["batches"] == []
        # Left cancelling: a later test's runner closes it at once instead of running its lines.
        cancelled = await gw.client.post(f"/v1/batches/{batch_id}/cancel", headers=gw.headers())
        assert cancelled.status_code == 200, cancelled.text
