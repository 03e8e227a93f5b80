"""Keys with roles through the admin API, on a real PostgreSQL: what each role may do, revocation, expiry,
hashed storage, the audit rows a request leaves, and usage."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.integration.conftest import DbGateway

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def chat(gw: DbGateway, key: str, model: str = "ok", **extra: object) -> int:
    response = await gw.client.post(
        "/v1/chat/completions", json={"model": model, **CHAT, **extra}, headers=gw.headers(key)
    )
    return response.status_code


async def test_key_is_shown_once_and_stored_as_a_digest(db_gateway: DbGateway, postgres_url: str) -> None:
    created = await db_gateway.create_key(name=name(), role="user")
    secret = str(created["key"])
    assert secret.startswith("ck_") and str(created["prefix"]) == secret[:11]
    shown = (await db_gateway.client.get(f"/admin/keys/{created['id']}", headers=db_gateway.headers())).json()
    assert "key" not in shown and "key_hash" not in shown and shown["prefix"] == created["prefix"]
    listing = (await db_gateway.client.get("/admin/keys", headers=db_gateway.headers())).text
    assert secret not in listing
    engine = create_async_engine(postgres_url)
    async with engine.connect() as conn:
        row = (
            (await conn.execute(text("SELECT * FROM llm.api_keys WHERE id = :id"), {"id": created["id"]}))
            .mappings()
            .one()
        )
    await engine.dispose()
    assert bytes(row["key_hash"]) == hashlib.sha256(secret.encode()).digest()
    assert all(secret not in str(value) for value in row.values())


async def test_user_key_calls_only_its_allowed_models(db_gateway: DbGateway) -> None:
    secret = str((await db_gateway.create_key(name=name(), role="user", allowed_models=["ok"]))["key"])
    assert await chat(db_gateway, secret, "ok") == 200
    assert await chat(db_gateway, secret, "other") == 403
    models = (await db_gateway.client.get("/v1/models", headers=db_gateway.headers(secret))).json()
    assert [m["id"] for m in models["data"]] == ["ok"]
    assert (await db_gateway.client.get("/admin/keys", headers=db_gateway.headers(secret))).status_code == 403


async def test_viewer_lists_models_and_reads_usage_but_cannot_infer(db_gateway: DbGateway) -> None:
    secret = str((await db_gateway.create_key(name=name(), role="viewer"))["key"])
    assert (await db_gateway.client.get("/v1/models", headers=db_gateway.headers(secret))).status_code == 200
    assert (await db_gateway.client.get("/v1/usage", headers=db_gateway.headers(secret))).status_code == 200
    assert await chat(db_gateway, secret) == 403
    assert (await db_gateway.client.get("/v1/sessions", headers=db_gateway.headers(secret))).status_code == 403


async def test_revoked_key_is_refused_at_once_on_this_worker(db_gateway: DbGateway) -> None:
    created = await db_gateway.create_key(name=name(), role="user")
    secret = str(created["key"])
    assert await chat(db_gateway, secret) == 200
    revoked = await db_gateway.client.delete(f"/admin/keys/{created['id']}", headers=db_gateway.headers())
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert await chat(db_gateway, secret) == 401
    again = await db_gateway.client.delete(f"/admin/keys/{created['id']}", headers=db_gateway.headers())
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]


async def test_expired_key_stops_working(db_gateway: DbGateway) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    secret = str((await db_gateway.create_key(name=name(), role="user", expires_at=soon.isoformat()))["key"])
    assert await chat(db_gateway, secret) == 200
    await asyncio.sleep(1.6)
    assert await chat(db_gateway, secret) == 401


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/admin/keys/not-a-uuid", None, 400),
        ("GET", f"/admin/keys/{uuid.uuid4()}", None, 404),
        ("DELETE", f"/admin/keys/{uuid.uuid4()}", None, 404),
        ("GET", "/admin/keys?limit=100000", None, 400),
        ("GET", "/admin/audit?limit=0", None, 400),
        ("GET", "/admin/audit?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", None, 400),
        ("POST", "/admin/keys", {"name": "x", "role": "root"}, 400),
        ("POST", "/admin/keys", {"name": "x", "allowed_models": ["gpt-17"]}, 400),
        ("POST", "/admin/keys", {"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, 400),
        ("POST", "/admin/keys", {"name": "x", "surprise": 1}, 400),
        # A time without a zone names no instant.
        ("POST", "/admin/keys", {"name": "x", "expires_at": "2030-01-01T00:00:00"}, 400),
        ("POST", "/admin/keys", {"name": "x", "expires_at": "9999-12-31T23:59:59+14:00"}, 201),
        ("POST", "/admin/keys", {"name": "x", "control_requests_per_minute": 0}, 400),
        ("POST", "/admin/keys", {"name": "x", "vector_quota_collections": 2**31}, 400),
        ("GET", f"/admin/keys?offset={2**64}", None, 400),
        ("POST", "/admin/keys", {"name": ""}, 400),
        # Values the database refuses: one translation to 400 (never a 500).
        ("POST", "/admin/keys", {"name": "nul\u0000byte"}, 400),
        ("GET", "/admin/audit?model=a%00b", None, 400),
        ("GET", f"/admin/audit?before_id={2**70}", None, 400),
        ("GET", "/admin/usage?since=0001-01-01T00:00:00Z", None, 400),
    ],
)
async def test_bad_admin_input_is_a_clear_4xx(
    db_gateway: DbGateway, method: str, path: str, body: dict[str, object] | None, status: int
) -> None:
    response = await db_gateway.client.request(method, path, json=body, headers=db_gateway.headers())
    assert response.status_code == status, response.text
    if status >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def wait_for_audit(gw: DbGateway, query: str, count: int) -> list[dict[str, object]]:
    for _ in range(100):
        page = (await gw.client.get(f"/admin/audit?{query}", headers=gw.headers())).json()
        if len(page["data"]) >= count:
            return page["data"]  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    raise AssertionError(f"audit rows for {query} did not arrive: {page}")


async def test_every_request_leaves_an_audit_row_and_counts_in_usage(db_gateway: DbGateway) -> None:
    created = await db_gateway.create_key(name=name(), role="user")
    key_id, secret = created["id"], str(created["key"])
    for _ in range(3):
        assert await chat(db_gateway, secret) == 200
    assert await chat(db_gateway, secret, stream=True) == 200
    assert await chat(db_gateway, secret, "nope") == 404
    rows = await wait_for_audit(db_gateway, f"key_id={key_id}&kind=api", 5)
    assert sorted(r["status"] for r in rows) == [200, 200, 200, 200, 404]
    ok = [r for r in rows if r["status"] == 200]
    assert all(r["model"] == "ok" and r["endpoint"] == "/v1/chat/completions" and r["role"] == "user" for r in ok)
    assert sum(1 for r in ok if r["ttft_ms"] is not None) == 1  # the stream
    assert [r["error_type"] for r in rows if r["status"] == 404] == ["invalid_request_error"]
    admin_rows = await wait_for_audit(db_gateway, "kind=admin&limit=500", 1)
    assert any(r["action"] == "keys.create" and r["target"] == key_id for r in admin_rows)

    usage = (await db_gateway.client.get(f"/admin/usage?key_id={key_id}", headers=db_gateway.headers())).json()
    by_model = {row["model"]: row for row in usage["data"]}
    assert by_model["ok"]["requests"] == 4 and by_model["ok"]["prompt_tokens"] == 3 * 5
    own = (await db_gateway.client.get("/v1/usage", headers=db_gateway.headers(secret))).json()
    assert {row["key_id"] for row in own["data"]} == {key_id}


async def test_audit_pages_do_not_overlap(db_gateway: DbGateway) -> None:
    secret = str((await db_gateway.create_key(name=name(), role="user"))["key"])
    for _ in range(5):
        await chat(db_gateway, secret)
    first = (await db_gateway.client.get("/admin/audit?limit=2", headers=db_gateway.headers())).json()
    assert first["has_more"] and len(first["data"]) == 2
    second = (
        await db_gateway.client.get(
            f"/admin/audit?limit=2&before_id={first['next_before_id']}", headers=db_gateway.headers()
        )
    ).json()
    assert {r["id"] for r in first["data"]}.isdisjoint({r["id"] for r in second["data"]})
    assert max(r["id"] for r in second["data"]) < min(r["id"] for r in first["data"])
