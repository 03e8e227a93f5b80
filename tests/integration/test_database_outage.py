"""PostgreSQL stopped under load: requests keep being served, cached keys keep working, unknown keys and
database routes get a clear 503, and once it is back every request has exactly one audit row."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.services import services_of
from services.postgres import LocalPostgres
from tests.integration.conftest import running_db_gateway

CHAT = {"model": "ok", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def server(postgres_server: LocalPostgres | None) -> LocalPostgres:
    if postgres_server is None:
        pytest.skip("DATABASE_URL names an external server: this test stops and starts its own")
    return postgres_server


async def audited_request_ids(url: str, ids: list[str]) -> list[str]:
    engine = create_async_engine(url)
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT request_id FROM llm.audit_log WHERE request_id = ANY(:ids)"), {"ids": ids}
        )
        found = [row[0] for row in rows]
    await engine.dispose()
    return found


async def test_outage_under_load_loses_no_audit_row_and_duplicates_none(
    tmp_path: Path, server: LocalPostgres, postgres_url: str, fake_upstream_url: str
) -> None:
    run = uuid.uuid4().hex[:8]
    async with running_db_gateway(
        tmp_path, postgres_url, fake_upstream_url, key_cache_ttl_s=0.2, audit_batch_size=20
    ) as gw:
        user = str((await gw.create_key(name=f"outage-{run}", role="user"))["key"])
        sent: list[str] = []

        async def send(i: int, key: str) -> int:
            request_id = f"{run}-{i}"
            sent.append(request_id)
            response = await gw.client.post(
                "/v1/chat/completions", json=CHAT, headers=gw.headers(key, **{"X-Request-ID": request_id})
            )
            return response.status_code

        statuses = [await send(i, user) for i in range(100)]
        server.stop(mode="immediate")  # a crash, not a polite shutdown
        try:
            await asyncio.sleep(0.3)  # past the key cache's TTL
            # The cached user key keeps working, and so does the bootstrap admin key.
            statuses += [await send(i, user) for i in range(100, 200)]
            statuses += [await send(i, "test-admin-key-0123456789") for i in range(200, 250)]
            unknown = await gw.client.post("/v1/chat/completions", json=CHAT, headers=gw.headers("ck_not-a-cached-key"))
            assert unknown.status_code == 503 and unknown.json()["error"]["code"] == "database_unavailable"
            listing = await gw.client.get("/admin/keys", headers=gw.headers())
            assert listing.status_code == 503 and "unreachable" in listing.json()["error"]["message"]
            assert services_of(gw.app).audit.spooled_rows > 0
        finally:
            server.start()
        statuses += [await send(i, user) for i in range(250, 300)]
        assert statuses == [200] * 300
    # Leaving the gateway closed the audit log: everything replayed or written.
    found = await audited_request_ids(postgres_url, sent)
    assert len(found) == 300 and set(found) == set(sent)
