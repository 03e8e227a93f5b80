"""Rate limits, the response cache and revocation through the gateway, on real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from gateway.services import services_of
from services.redis import LocalRedis
from tests.integration.conftest import DbGateway, running_db_gateway

CHAT = {"model": "ok", "messages": [{"role": "user", "content": "hi"}]}
DETERMINISTIC = {**CHAT, "temperature": 0}


def failures_counted() -> float:
    """citadel_llm_redis_failures_total, all labels."""
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "citadel_llm_redis_failures"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def away_from_minute_edge() -> None:
    """Counters are per minute (sliding): keep a test's burst inside one window so counts are exact."""
    if time.time() % 60 > 55:
        time.sleep(60 - time.time() % 60 + 0.2)


@pytest.fixture
async def gw(tmp_path: Path, postgres_url: str, fake_upstream_url: str, redis_url: str) -> DbGateway:
    async with running_db_gateway(tmp_path, postgres_url, fake_upstream_url, redis_url=redis_url) as gateway:
        yield gateway  # type: ignore[misc]


async def post(gw: DbGateway, key: str, body: dict[str, object], **headers: str) -> httpx.Response:
    return await gw.client.post("/v1/chat/completions", json=body, headers=gw.headers(key, **headers))


async def test_requests_per_minute_then_429_with_headers(gw: DbGateway) -> None:
    away_from_minute_edge()
    key = str((await gw.create_key(name=f"rl-{uuid.uuid4().hex[:6]}", role="user", requests_per_minute=3))["key"])
    answers = [await post(gw, key, CHAT) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers[:3]] == ["2", "1", "0"]
    assert all(a.headers["x-ratelimit-limit-requests"] == "3" for a in answers)
    limited = answers[3]
    assert int(limited.headers["retry-after"]) >= 1
    error = limited.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and set(error) == {"message", "type", "param", "code"}


async def test_streaming_works_through_the_limiter(gw: DbGateway) -> None:
    key = str((await gw.create_key(name="rl-stream", role="user", requests_per_minute=100))["key"])
    async with gw.client.stream(
        "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=gw.headers(key)
    ) as response:
        assert response.status_code == 200 and "x-ratelimit-remaining-requests" in response.headers
        chunks = [chunk async for chunk in response.aiter_bytes()]
    text = b"".join(chunks).decode()
    assert text.endswith("data: [DONE]\n\n") and '"content":"world"' in text and '"error"' not in text


async def test_cache_hits_are_per_key_and_honour_cache_control(gw: DbGateway) -> None:
    one = str((await gw.create_key(name="cache-one", role="user"))["key"])
    two = str((await gw.create_key(name="cache-two", role="user"))["key"])
    body = {**DETERMINISTIC, "messages": [{"role": "user", "content": f"q-{uuid.uuid4()}"}]}
    first, second = await post(gw, one, body), None
    for _ in range(50):  # the store happens after the answer
        second = await post(gw, one, body)
        if second.headers.get("x-cache") == "HIT":
            break
        await asyncio.sleep(0.02)
    assert first.headers["x-cache"] == "MISS" and first.headers["cache-control"] == "private"
    assert second is not None and second.headers["x-cache"] == "HIT" and second.json() == first.json()
    assert (await post(gw, two, body)).headers["x-cache"] == "MISS"  # never another key's answer
    assert (await post(gw, one, body, **{"Cache-Control": "no-store"})).headers.get("x-cache") != "HIT"
    assert (await post(gw, one, body, **{"Cache-Control": "no-cache"})).headers["x-cache"] == "MISS"
    assert "x-cache" not in (await post(gw, one, CHAT)).headers  # temperature 0.7: not cacheable


async def test_a_cached_stream_is_replayed_as_sse(gw: DbGateway) -> None:
    key = str((await gw.create_key(name="cache-stream", role="user"))["key"])
    body = {**DETERMINISTIC, "stream": True, "messages": [{"role": "user", "content": f"s-{uuid.uuid4()}"}]}
    first = await post(gw, key, body)
    for _ in range(50):
        again = await post(gw, key, body)
        if again.headers.get("x-cache") == "HIT":
            break
        await asyncio.sleep(0.02)
    assert again.headers["x-cache"] == "HIT" and again.headers["content-type"].startswith("text/event-stream")
    assert again.text == first.text and again.text.endswith("data: [DONE]\n\n")


async def test_revocation_reaches_every_worker_at_once(
    tmp_path: Path, postgres_url: str, fake_upstream_url: str, redis_url: str
) -> None:
    # Two gateways (as two workers would be) with a long key cache: only Redis can tell the second one.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        running_db_gateway(
            tmp_path / "a", postgres_url, fake_upstream_url, redis_url=redis_url, key_cache_ttl_s=300
        ) as a,
        running_db_gateway(
            tmp_path / "b", postgres_url, fake_upstream_url, redis_url=redis_url, key_cache_ttl_s=300
        ) as b,
    ):
        created = await a.create_key(name="revoke-everywhere", role="user")
        key = str(created["key"])
        assert (await post(b, key, CHAT)).status_code == 200  # now cached on b
        assert (await a.client.delete(f"/admin/keys/{created['id']}", headers=a.headers())).status_code == 200
        for _ in range(50):
            if (await post(b, key, CHAT)).status_code == 401:
                break
            await asyncio.sleep(0.02)
        assert (await post(b, key, CHAT)).status_code == 401


async def test_redis_down_under_load_fails_open_and_recovers(
    tmp_path: Path, postgres_url: str, fake_upstream_url: str, redis_url: str, redis_server: LocalRedis | None
) -> None:
    if redis_server is None:
        pytest.skip("REDIS_URL names an external server: this test stops and starts its own")
    async with running_db_gateway(tmp_path, postgres_url, fake_upstream_url, redis_url=redis_url) as gw:
        key = str((await gw.create_key(name="redis-outage", role="user", requests_per_minute=10_000))["key"])
        counted_before = failures_counted()
        statuses = [(await post(gw, key, DETERMINISTIC)).status_code for _ in range(20)]
        redis_server.stop()
        try:
            started = time.monotonic()
            down = [await post(gw, key, DETERMINISTIC) for _ in range(50)]
            per_request = (time.monotonic() - started) / 50
            statuses += [r.status_code for r in down]
            assert all("x-ratelimit-remaining-requests" not in r.headers for r in down)  # limits failed open
            assert services_of(gw.app).redis_policy.total() > 0
            assert failures_counted() > counted_before
        finally:
            redis_server.start()
        await asyncio.sleep(0.5)  # past the policy's cool-down
        back = [await post(gw, key, DETERMINISTIC) for _ in range(20)]
        statuses += [r.status_code for r in back]
        assert statuses == [200] * 90
        assert "x-ratelimit-remaining-requests" in back[-1].headers
        # Generous bound: a dead Redis costs milliseconds, not the seconds of a socket timeout.
        assert per_request < 0.5


async def test_control_plane_calls_have_their_own_limit(gw: DbGateway) -> None:
    """Usage, sessions, models and vector calls count against `control_requests_per_minute`, apart from the model
    routes' budget: a key that used up its control calls still chats, and one that chatted still lists."""
    away_from_minute_edge()
    name = f"ctl-{uuid.uuid4().hex[:6]}"
    key = str((await gw.create_key(name=name, role="user", control_requests_per_minute=3))["key"])
    paths = ["/v1/usage", "/v1/sessions", "/v1/models", "/v1/vectors/collections"]
    answers = [await gw.client.get(path, headers=gw.headers(key)) for path in paths]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    limited = answers[3]
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    error = limited.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "control-plane" in error["message"]
    assert (await post(gw, key, CHAT)).status_code == 200  # the model routes keep their own budget
    # Admin keys have no control limit by default.
    for _ in range(5):
        assert (await gw.client.get("/admin/keys", headers=gw.headers())).status_code == 200
