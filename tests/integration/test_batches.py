"""Batches against a real PostgreSQL and the fake upstream: create, retrieve, list pages, cancel, the lifecycle to
`completed` with each custom_id once in the output, a malformed input failing with line numbers, another key's
404, retries, one audit row per line, and resume: a runner stopped mid-batch and a new one answer each line once."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api import batches as batch_routes
from gateway.batch.files import read_file_bytes, store_file
from gateway.batch.runner import BatchRunner
from gateway.services import services_of
from gateway.store.db import asyncpg_dsn
from tests.integration.conftest import DbGateway, running_db_gateway
from tests.support.catalogs import chat_entry

pytestmark = pytest.mark.asyncio
CHAT = "/v1/chat/completions"


@contextlib.asynccontextmanager
async def batch_gateway(
    tmp_path: Path, postgres_url: str, upstream: str, **overrides: object
) -> AsyncIterator[DbGateway]:
    """A gateway whose own runner is off (each test starts and stops runners itself), with the batch routes."""
    models = {
        "ok": chat_entry(upstream, upstream_model="upstream-ok"),
        "busy": chat_entry(upstream, upstream_model="busy"),
        "fail500": chat_entry(upstream),
        "bad400": chat_entry(upstream),
        "emb": {**chat_entry(upstream, upstream_model="upstream-emb"), "kind": "embedding"},
    }
    settings: dict[str, Any] = {"batch_enabled": False, "batch_poll_s": 0.05, "batch_concurrency": 4}
    settings.update(overrides)
    async with running_db_gateway(tmp_path, postgres_url, upstream, models=models, **settings) as gw:
        if not any(getattr(route, "path", "") == "/v1/batches" for route in gw.app.router.routes):
            gw.app.include_router(batch_routes.router)  # until create_app mounts it
        yield gw


@contextlib.asynccontextmanager
async def runner(gw: DbGateway, postgres_url: str) -> AsyncIterator[BatchRunner]:
    services = services_of(gw.app)
    batch_runner = BatchRunner(
        services=services, app=gw.app, dsn=asyncpg_dsn(postgres_url), settings=services.settings.batch
    )
    async with batch_runner.running():
        yield batch_runner


def chat_line(custom_id: str, model: str = "ok", content: str = "hi") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


async def upload(gw: DbGateway, key_id: uuid.UUID, lines: list[Any]) -> str:
    data = b"\n".join(item if isinstance(item, bytes) else orjson.dumps(item) for item in lines) + b"\n"
    stored = await store_file(
        services_of(gw.app).db_sessions, key_id=key_id, purpose="batch", filename="in.jsonl", data=data
    )
    return stored.id


async def new_key(gw: DbGateway, **fields: object) -> tuple[str, uuid.UUID]:
    created = await gw.create_key(name=f"batch-{uuid.uuid4().hex[:8]}", role="user", **fields)
    return str(created["key"]), uuid.UUID(str(created["id"]))


async def create(gw: DbGateway, key: str, file_id: str, endpoint: str = CHAT, **extra: object) -> dict[str, Any]:
    body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h", **extra}
    response = await gw.client.post("/v1/batches", json=body, headers=gw.headers(key))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def wait_for(gw: DbGateway, key: str, batch_id: str, *states: str, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = (await gw.client.get(f"/v1/batches/{batch_id}", headers=gw.headers(key))).json()
        if batch["status"] in states:
            return batch  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, batch
        await asyncio.sleep(0.05)


async def jsonl(gw: DbGateway, file_id: str) -> list[dict[str, Any]]:
    data = await read_file_bytes(services_of(gw.app).db_sessions, file_id)
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


async def test_create_get_list_and_the_lifecycle_to_completed(
    tmp_path: Path, postgres_url: str, fake_upstream_url: str, db_engine: AsyncEngine
) -> None:
    async with batch_gateway(tmp_path, postgres_url, fake_upstream_url) as gw:
        key, key_id = await new_key(gw)
        lines = [chat_line(f"req-{n}", content=f"question {n}") for n in range(7)]
        file_id = await upload(gw, key_id, lines)
        batch = await create(gw, key, file_id, metadata={"project": "eval"})
        assert batch["object"] == "batch" and batch["status"] == "validating"
        assert batch["metadata"] == {"project": "eval"} and batch["expires_at"] - batch["created_at"] == 86400
        assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
        async with runner(gw, postgres_url):
            done = await wait_for(gw, key, batch["id"], "completed", "failed")
        assert done["status"] == "completed", done
        assert done["request_counts"] == {"total": 7, "completed": 7, "failed": 0}
        assert done["in_progress_at"] and done["finalizing_at"] and done["completed_at"]
        assert done["error_file_id"] is None
        output = await jsonl(gw, done["output_file_id"])
        assert [line["custom_id"] for line in output] == [f"req-{n}" for n in range(7)]
        first = output[0]
        assert first["id"].startswith("batch_req_") and first["error"] is None
        assert first["response"]["status_code"] == 200
        assert first["response"]["request_id"] == f"{batch['id']}-1"
        assert first["response"]["body"]["object"] == "chat.completion"
        # One audit row per line, marked as batch work.
        await asyncio.sleep(0.3)
        async with db_engine.connect() as connection:
            rows = (
                await connection.execute(
                    text("SELECT request_id, endpoint, status FROM llm.audit_log WHERE request_id LIKE :p"),
                    {"p": f"{batch['id']}-%"},
                )
            ).all()
        assert sorted(row.request_id for row in rows) == sorted(f"{batch['id']}-{n}" for n in range(1, 8))
        assert {(row.endpoint, row.status) for row in rows} == {(f"batch:{CHAT}", 200)}

        listed = (await gw.client.get("/v1/batches", headers=gw.headers(key))).json()
        assert listed["object"] == "list" and listed["data"][0]["id"] == batch["id"]
        assert listed["first_id"] == listed["last_id"] == batch["id"] and listed["has_more"] is False


async def test_list_pages_with_a_cursor(tmp_path: Path, postgres_url: str, fake_upstream_url: str) -> None:
    async with batch_gateway(tmp_path, postgres_url, fake_upstream_url) as gw:
        key, key_id = await new_key(gw)
        file_id = await upload(gw, key_id, [chat_line("a")])
        ids = [(await create(gw, key, file_id))["id"] for _ in range(3)]
        first = (await gw.client.get("/v1/batches?limit=2", headers=gw.headers(key))).json()
        assert [item["id"] for item in first["data"]] == ids[::-1][:2] and first["has_more"] is True
        after = first["last_id"]
        second = (await gw.client.get(f"/v1/batches?limit=2&after={after}", headers=gw.headers(key))).json()
        assert [item["id"] for item in second["data"]] == [ids[0]] and second["has_more"] is False
        bad = await gw.client.get("/v1/batches?limit=0", headers=gw.headers(key))
        assert bad.status_code == 400
        for batch_id in ids:  # leave nothing for another test's runner
            await gw.client.post(f"/v1/batches/{batch_id}/cancel", headers=gw.headers(key))
        async with runner(gw, postgres_url):
            for batch_id in ids:
                await wait_for(gw, key, batch_id, "cancelled")


async def test_bad_requests_and_another_keys_404(tmp_path: Path, postgres_url: str, fake_upstream_url: str) -> None:
    async with batch_gateway(tmp_path, postgres_url, fake_upstream_url) as gw:
        alice, alice_id = await new_key(gw)
        bob, _ = await new_key(gw)
        file_id = await upload(gw, alice_id, [chat_line("a")])
        base = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}
        for body, status in [
            ({**base, "completion_window": "48h"}, 400),
            ({**base, "endpoint": "/v1/other"}, 400),
            ({**base, "metadata": {f"k{n}": "v" for n in range(17)}}, 400),
            ({**base, "metadata": {"k": "v" * 513}}, 400),
            ({**base, "input_file_id": "file-nope"}, 404),
        ]:
            response = await gw.client.post("/v1/batches", json=body, headers=gw.headers(alice))
            assert response.status_code == status, (body, response.text)
            assert "error" in response.json()
        # Bob can neither use Alice's file nor see, list or cancel her batch.
        refused = await gw.client.post("/v1/batches", json=base, headers=gw.headers(bob))
        assert refused.status_code == 404
        batch = await create(gw, alice, file_id)
        for method, path in [("GET", f"/v1/batches/{batch['id']}"), ("POST", f"/v1/batches/{batch['id']}/cancel")]:
            response = await gw.client.request(method, path, headers=gw.headers(bob))
            assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
        assert (await gw.client.get("/v1/batches", headers=gw.headers(bob))).json()["data"] == []
        # The admin sees it.
        assert (await gw.client.get(f"/v1/batches/{batch['id']}", headers=gw.headers())).status_code == 200
        async with runner(gw, postgres_url):
            await wait_for(gw, alice, batch["id"], "completed")


async def test_a_malformed_input_fails_the_batch_naming_the_lines(
    tmp_path: Path, postgres_url: str, fake_upstream_url: str
) -> None:
    async with batch_gateway(tmp_path, postgres_url, fake_upstream_url) as gw:
        key, key_id = await new_key(gw, allowed_models=["ok"])
        lines: list[Any] = [chat_line("a"), b"{broken", chat_line("a"), chat_line("d", model="busy"), chat_line("e")]
        file_id = await upload(gw, key_id, lines)
        batch = await create(gw, key, file_id)
        async with runner(gw, postgres_url):
            failed = await wait_for(gw, key, batch["id"], "failed", "completed")
        assert failed["status"] == "failed" and failed["failed_at"]
        errors = failed["errors"]
        assert errors["object"] == "list"
        assert [(e["line"], e["code"]) for e in errors["data"]] == [
            (2, "invalid_json_line"),
            (3, "duplicate_custom_id"),
            (4, "model_not_allowed"),
        ]
        assert failed["request_counts"]["total"] == 0 and failed["output_file_id"] is None


async def test_upstream_failures_are_retried_then_written_to_the_error_file(
    tmp_path: Path, postgres_url: str, fake_upstream_url: str
) -> None:
    async with batch_gateway(tmp_path, postgres_url, fake_upstream_url, batch_max_attempts=2) as gw:
        key, key_id = await new_key(gw)
        lines = [chat_line("good"), chat_line("boom", model="fail500"), chat_line("refused", model="bad400")]
        batch = await create(gw, key, await upload(gw, key_id, lines))
        async with runner(gw, postgres_url):
            done = await wait_for(gw, key, batch["id"], "completed", timeout_s=30)
        assert done["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
        assert [line["custom_id"] for line in await jsonl(gw, done["output_file_id"])] == ["good"]
        errors = {line["custom_id"]: line for line in await jsonl(gw, done["error_file_id"])}
        assert set(errors) == {"boom", "refused"}
        assert errors["boom"]["response"]["status_code"] == 500 and errors["boom"]["error"]["code"]
        assert errors["refused"]["response"]["status_code"] == 400
        async with services_of(gw.app).db_sessions() as session:  # type: ignore[misc]
            attempts = dict(
                (
                    await session.execute(
                        text("SELECT custom_id, attempts FROM llm.batch_lines WHERE batch_id = :b"), {"b": batch["id"]}
                    )
                ).all()
            )
        assert attempts == {"good": 1, "boom": 2, "refused": 1}


async def test_cancel_stops_the_batch_with_partial_output(
    tmp_path: Path, postgres_url: str, fake_upstream_url: str
) -> None:
    async with batch_gateway(tmp_path, postgres_url, fake_upstream_url, batch_concurrency=1) as gw:
        key, key_id = await new_key(gw)
        lines = [chat_line(f"c{n}", model="busy") for n in range(30)]
        batch = await create(gw, key, await upload(gw, key_id, lines))
        async with runner(gw, postgres_url):
            running = await wait_for(gw, key, batch["id"], "in_progress")
            while running["request_counts"]["completed"] < 2:
                running = await wait_for(gw, key, batch["id"], "in_progress")
            cancelling = await gw.client.post(f"/v1/batches/{batch['id']}/cancel", headers=gw.headers(key))
            assert cancelling.status_code == 200 and cancelling.json()["status"] == "cancelling"
            done = await wait_for(gw, key, batch["id"], "cancelled")
        assert done["cancelling_at"] and done["cancelled_at"]
        completed = done["request_counts"]["completed"]
        assert 2 <= completed < 30
        output = [line["custom_id"] for line in await jsonl(gw, done["output_file_id"])]
        assert output == [f"c{n}" for n in range(completed)]
        again = await gw.client.post(f"/v1/batches/{batch['id']}/cancel", headers=gw.headers(key))
        assert again.status_code == 200 and again.json()["status"] == "cancelled"


async def test_a_runner_stopped_mid_batch_resumes_and_answers_each_line_once(
    tmp_path: Path, postgres_url: str, fake_upstream_url: str
) -> None:
    async with batch_gateway(tmp_path, postgres_url, fake_upstream_url, batch_concurrency=3) as gw:
        key, key_id = await new_key(gw)
        lines = [chat_line(f"r{n}", model="busy") for n in range(15)]
        batch = await create(gw, key, await upload(gw, key_id, lines))
        async with runner(gw, postgres_url) as first:
            progress = await wait_for(gw, key, batch["id"], "in_progress")
            while progress["request_counts"]["completed"] < 3:
                progress = await wait_for(gw, key, batch["id"], "in_progress")
            assert first.leading
        # Stopped with lines in flight: they stay pending. A new runner (another worker, after a crash) resumes.
        stopped = await wait_for(gw, key, batch["id"], "in_progress")
        assert stopped["request_counts"]["completed"] < 15
        async with runner(gw, postgres_url):
            done = await wait_for(gw, key, batch["id"], "completed")
        assert done["request_counts"] == {"total": 15, "completed": 15, "failed": 0}
        output = [line["custom_id"] for line in await jsonl(gw, done["output_file_id"])]
        assert output == [f"r{n}" for n in range(15)]  # each custom_id exactly once, in file order


async def test_only_one_runner_leads(tmp_path: Path, postgres_url: str, fake_upstream_url: str) -> None:
    async with batch_gateway(tmp_path, postgres_url, fake_upstream_url) as gw:
        async with runner(gw, postgres_url) as one, runner(gw, postgres_url) as two:
            deadline = time.monotonic() + 5
            while not (one.leading or two.leading):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            assert one.leading != two.leading
        # The leader gone, the other takes over.
        async with runner(gw, postgres_url) as three:
            deadline = time.monotonic() + 5
            while not three.leading:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)


async def test_the_keys_rate_limit_pauses_its_lines_without_spending_attempts(
    tmp_path: Path, postgres_url: str, fake_upstream_url: str, redis_url: str
) -> None:
    async with batch_gateway(tmp_path, postgres_url, fake_upstream_url, redis_url=redis_url) as gw:
        key, key_id = await new_key(gw, requests_per_minute=2)
        batch = await create(gw, key, await upload(gw, key_id, [chat_line(f"l{n}", content=f"q{n}") for n in range(4)]))
        async with runner(gw, postgres_url):
            progress = await wait_for(gw, key, batch["id"], "in_progress")
            while progress["request_counts"]["completed"] < 2:
                progress = await wait_for(gw, key, batch["id"], "in_progress")
            await asyncio.sleep(0.5)  # the third line met the 429 by now: it waits for Retry-After, still pending
            progress = await wait_for(gw, key, batch["id"], "in_progress")
            assert progress["request_counts"] == {"total": 4, "completed": 2, "failed": 0}
            async with services_of(gw.app).db_sessions() as session:  # type: ignore[misc]
                pending = (
                    await session.execute(
                        text("SELECT attempts FROM llm.batch_lines WHERE batch_id = :b AND status = 'pending'"),
                        {"b": batch["id"]},
                    )
                ).scalars()
                assert list(pending) == [0, 0]
            await gw.client.post(f"/v1/batches/{batch['id']}/cancel", headers=gw.headers(key))
            done = await wait_for(gw, key, batch["id"], "cancelled")
        output = [line["custom_id"] for line in await jsonl(gw, done["output_file_id"])]
        assert len(output) == 2 and output == sorted(set(output))  # the two admitted lines (4 went at once), once


async def test_a_batch_past_its_window_expires_with_partial_output(
    tmp_path: Path, postgres_url: str, fake_upstream_url: str
) -> None:
    async with batch_gateway(tmp_path, postgres_url, fake_upstream_url, batch_concurrency=1) as gw:
        key, key_id = await new_key(gw)
        batch = await create(gw, key, await upload(gw, key_id, [chat_line(f"x{n}", model="busy") for n in range(20)]))
        async with runner(gw, postgres_url):
            progress = await wait_for(gw, key, batch["id"], "in_progress")
            while progress["request_counts"]["completed"] < 1:
                progress = await wait_for(gw, key, batch["id"], "in_progress")
            async with services_of(gw.app).db_sessions() as session:  # type: ignore[misc]
                await session.execute(
                    text("UPDATE llm.batches SET expires_at = now() - interval '1 second' WHERE id = :b"),
                    {"b": batch["id"]},
                )
                await session.commit()
            done = await wait_for(gw, key, batch["id"], "expired")
        assert done["expired_at"] and 1 <= done["request_counts"]["completed"] < 20
        output = [line["custom_id"] for line in await jsonl(gw, done["output_file_id"])]
        assert output == [f"x{n}" for n in range(done["request_counts"]["completed"])]
