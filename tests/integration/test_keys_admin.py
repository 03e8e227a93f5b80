"""Keys with roles through the admin API, on a real PostgreSQL: what each role may do, revocation, expiry,
hashed storage, the audit rows a request leaves, and usage."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.admission.priority import Priority
from gateway.services import services_of
from tests.integration.conftest import DbGateway, running_db_gateway

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
        ("POST", "/admin/keys", {"name": "x", "priority": "urgent"}, 400),
        ("POST", "/admin/keys", {"name": "x", "priority": None}, 400),
        ("POST", "/admin/keys", {"name": "x", "queue_weight": 0}, 400),
        ("POST", "/admin/keys", {"name": "x", "queue_weight": -1}, 400),
        ("POST", "/admin/keys", {"name": "x", "queue_weight": 1e-310}, 400),
        ("POST", "/admin/keys", {"name": "x", "queue_weight": 0.01}, 201),
        ("POST", "/admin/keys", {"name": "x", "queue_weight": 100.01}, 400),
        ("POST", "/admin/keys", {"name": "x", "queue_weight": "heavy"}, 400),
        ("POST", "/admin/keys", {"name": "x", "queue_weight": 100, "priority": "batch"}, 201),
        ("PATCH", f"/admin/keys/{uuid.uuid4()}", {"priority": "batch"}, 404),
        ("PATCH", f"/admin/keys/{uuid.uuid4()}", {}, 400),
        ("PATCH", f"/admin/keys/{uuid.uuid4()}", {"role": "admin"}, 400),
        ("PATCH", "/admin/keys/not-a-uuid", {"priority": "batch"}, 400),
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


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"priority": "urgent"}, "priority"),
        ({"priority": None}, "priority"),
        ({"name": None}, "name"),
        ({"queue_weight": 0}, "queue_weight"),
        ({"queue_weight": 101}, "queue_weight"),
        ({"allowed_models": ["gpt-17"]}, "allowed_models"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ],
)
async def test_bad_key_updates_name_the_field(db_gateway: DbGateway, body: dict[str, object], param: str) -> None:
    created = await db_gateway.create_key(name=name(), role="user")
    for method, path, payload in (
        ("PATCH", f"/admin/keys/{created['id']}", body),
        ("POST", "/admin/keys", {"name": "x", **body} if param != "name" else None),
    ):
        if payload is None:
            continue
        response = await db_gateway.client.request(method, path, json=payload, headers=db_gateway.headers())
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param


async def test_a_keys_class_and_queue_weight_are_made_shown_and_changed(db_gateway: DbGateway) -> None:
    plain = await db_gateway.create_key(name=name(), role="user")
    assert plain["priority"] == "interactive" and plain["queue_weight"] is None
    created = await db_gateway.create_key(name=name(), role="user", priority="batch", queue_weight=2)
    key_id, secret = created["id"], str(created["key"])
    assert created["priority"] == "batch" and created["queue_weight"] == 2.0
    shown = (await db_gateway.client.get(f"/admin/keys/{key_id}", headers=db_gateway.headers())).json()
    assert shown["priority"] == "batch" and shown["queue_weight"] == 2.0
    listing = (await db_gateway.client.get("/admin/keys", headers=db_gateway.headers())).json()["data"]
    assert {(k["id"], k["priority"], k["queue_weight"]) for k in listing} >= {
        (key_id, "batch", 2.0),
        (plain["id"], "interactive", None),
    }

    key_store = services_of(db_gateway.app).key_store
    before = await key_store.authenticate(secret)
    assert before is not None and before.priority is Priority.BATCH and before.weight == 2.0

    patch = {"priority": "interactive", "queue_weight": 0.5, "requests_per_minute": 30}
    updated = await db_gateway.client.patch(f"/admin/keys/{key_id}", json=patch, headers=db_gateway.headers())
    assert updated.status_code == 200, updated.text
    body = updated.json()
    assert (body["priority"], body["queue_weight"], body["requests_per_minute"]) == ("interactive", 0.5, 30)
    assert body["name"] == created["name"] and body["role"] == "user"  # fields not sent are kept
    # This worker forgot its cached record at once: the next request runs with the new values.
    after = await key_store.authenticate(secret)
    assert after is not None and after.priority is Priority.INTERACTIVE and after.weight == 0.5

    cleared = await db_gateway.client.patch(
        f"/admin/keys/{key_id}", json={"queue_weight": None}, headers=db_gateway.headers()
    )
    assert cleared.json()["queue_weight"] is None and cleared.json()["requests_per_minute"] == 30
    principal = await key_store.authenticate(secret)
    assert principal is not None and principal.queue_weight is None and principal.weight == 1.0
    assert await chat(db_gateway, secret) == 200
    # A value the database refuses is a 400 here too, and changes nothing.
    refused = await db_gateway.client.patch(
        f"/admin/keys/{key_id}", json={"name": "nul\u0000byte"}, headers=db_gateway.headers()
    )
    assert refused.status_code == 400, refused.text
    shown = (await db_gateway.client.get(f"/admin/keys/{key_id}", headers=db_gateway.headers())).json()
    assert shown["name"] == created["name"]
    for _ in range(100):  # audit rows are written in batches, off the request's path
        admin_rows = await db_gateway.client.get("/admin/audit?kind=admin&limit=500", headers=db_gateway.headers())
        updates = [r for r in admin_rows.json()["data"] if r["action"] == "keys.update" and r["target"] == key_id]
        if len(updates) >= 2:
            break
        await asyncio.sleep(0.05)
    assert len(updates) == 2


async def test_allow_lists_may_name_aliases(tmp_path: Path, postgres_url: str, fake_upstream_url: str) -> None:
    async with running_db_gateway(tmp_path, postgres_url, fake_upstream_url) as gw:
        config = tmp_path / "models.yaml"
        tree = yaml.safe_load(config.read_text())
        config.write_text(yaml.safe_dump({**tree, "aliases": {"fast": ["tiny", "ok"]}}))
        assert (await gw.client.post("/admin/reload", headers=gw.headers())).status_code == 200
        created = await gw.create_key(name=name(), role="user", allowed_models=["fast", "other"])
        assert created["allowed_models"] == ["fast", "other"]
        patched = await gw.client.patch(
            f"/admin/keys/{created['id']}", json={"allowed_models": ["fast"]}, headers=gw.headers()
        )
        assert patched.status_code == 200 and patched.json()["allowed_models"] == ["fast"]
        unknown = await gw.client.post(
            "/admin/keys", json={"name": "x", "allowed_models": ["fast", "slow"]}, headers=gw.headers()
        )
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "allowed_models"
        assert "slow" in unknown.json()["error"]["message"] and "fast" not in unknown.json()["error"]["message"]


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
