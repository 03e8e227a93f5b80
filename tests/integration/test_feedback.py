"""POST /v1/feedback on a real PostgreSQL: a key rates its own requests (an admin any), the rating is stored
against the audit row and counted; other keys' request ids stay hidden (404); a stopped database is a 503."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import free_port
from tests.integration.conftest import DbGateway, running_db_gateway

CHAT = {"model": "ok", "messages": [{"role": "user", "content": "hi"}]}


def feedback_count(model: str, rating: str) -> float:
    return REGISTRY.get_sample_value("citadel_llm_feedback_total", {"model": model, "rating": rating}) or 0.0


async def request(gw: DbGateway, key: str, request_id: str) -> None:
    answer = await gw.client.post(
        "/v1/chat/completions", json=CHAT, headers=gw.headers(key, **{"X-Request-ID": request_id})
    )
    assert answer.status_code == 200 and answer.headers["x-request-id"] == request_id


async def rate(gw: DbGateway, key: str, body: dict[str, Any], *, wait: bool = False) -> httpx.Response:
    """Rate; with `wait`, retry while the audit row is not written yet (batches of 50 ms here)."""
    for _ in range(60 if wait else 1):
        response = await gw.client.post("/v1/feedback", json=body, headers=gw.headers(key))
        if response.status_code != 404 or not wait:
            return response
        await asyncio.sleep(0.05)
    return response


async def test_a_key_rates_its_own_requests_and_only_those(db_gateway: DbGateway, postgres_url: str) -> None:
    gw = db_gateway
    run = uuid.uuid4().hex[:8]
    alice = await gw.create_key(name=f"alice-{run}", role="user")
    bob = await gw.create_key(name=f"bob-{run}", role="user")
    rid = f"fb-{run}"
    await request(gw, str(alice["key"]), rid)
    ups, twos = feedback_count("ok", "up"), feedback_count("ok", "2")

    first = await rate(gw, str(alice["key"]), {"request_id": rid, "rating": "up", "comment": "great"}, wait=True)
    assert first.status_code == 201, first.text
    assert first.json() | {"rated_at": None} == {
        "object": "feedback",
        "request_id": rid,
        "model": "ok",
        "rating": "up",
        "comment": "great",
        "rated_at": None,
    }
    assert feedback_count("ok", "up") == ups + 1
    again = await rate(gw, str(alice["key"]), {"request_id": rid, "rating": 2})
    assert again.status_code == 200 and again.json()["rating"] == "2" and again.json()["comment"] is None
    assert (feedback_count("ok", "up"), feedback_count("ok", "2")) == (ups + 1, twos)  # a change is not a new vote

    # Bob cannot rate Alice's request, nor learn that it exists.
    hidden = await rate(gw, str(bob["key"]), {"request_id": rid, "rating": "down"})
    unknown = await rate(gw, str(bob["key"]), {"request_id": f"nope-{run}", "rating": "down"})
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.json() == unknown.json() and hidden.json()["error"]["type"] == "invalid_request_error"
    # An admin may rate anyone's request.
    assert (await rate(gw, "test-admin-key-0123456789", {"request_id": rid, "rating": 5})).status_code == 201

    engine = create_async_engine(postgres_url)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT f.rating, f.key_id = a.key_id, f.rated_by = a.key_id, a.status FROM llm.feedback f "
                    "JOIN llm.audit_log a ON a.request_id = f.request_id WHERE f.request_id = :rid ORDER BY f.rating"
                ),
                {"rid": rid},
            )
        ).all()
    await engine.dispose()
    assert [tuple(row) for row in rows] == [("2", True, True, 200), ("5", True, False, 200)]


@pytest.mark.parametrize(
    "body",
    [
        {"request_id": "x", "rating": 6},
        {"request_id": "x", "rating": "meh"},
        {"request_id": "x", "rating": "5"},
        {"request_id": "x y", "rating": "up"},
        {"request_id": "x" * 129, "rating": "up"},
        {"request_id": "x", "rating": "up", "comment": "c" * 2001},
        {"request_id": "x", "rating": "up", "extra": 1},
        {"rating": "up"},
    ],
)
async def test_bad_feedback_is_a_400(db_gateway: DbGateway, body: dict[str, Any]) -> None:
    response = await rate(db_gateway, "test-admin-key-0123456789", body)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


async def test_database_down_is_a_503(tmp_path: Path, fake_upstream_url: str) -> None:
    # Nothing listens there: every connection is refused, as when PostgreSQL is down (the shared test
    # server is left alone; the bootstrap admin key needs no database).
    down = f"postgresql+asyncpg://citadel:secret@127.0.0.1:{free_port()}/citadel"
    failures = REGISTRY.get_sample_value("citadel_llm_postgres_failures_total", {"operation": "feedback"}) or 0.0
    async with running_db_gateway(tmp_path, down, fake_upstream_url) as gw:
        answer = await rate(gw, "test-admin-key-0123456789", {"request_id": "any", "rating": "up"})
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "database_unavailable" and error["type"] == "service_unavailable"
    assert "secret" not in answer.text
    after = REGISTRY.get_sample_value("citadel_llm_postgres_failures_total", {"operation": "feedback"})
    assert after == failures + 1
