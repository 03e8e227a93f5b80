"""GET /metrics on a gateway with a real Redis in front of the fake upstream: what a client's requests do to
the exported counters (requests, tokens, cost, cache hits and misses, rate-limited requests by limit)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from tests.conftest import make_settings
from tests.support.catalogs import ADMIN_KEY, chat_entry, write_models_file

HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


def chat(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.fixture
async def client(
    tmp_path: Path, fake_upstream_url: str, redis_url: str, redis_client: object
) -> AsyncIterator[httpx.AsyncClient]:
    priced = {**chat_entry(fake_upstream_url), "price_per_1k_prompt_tokens": 1.5, "price_per_1k_completion_tokens": 3}
    models = write_models_file(tmp_path / "models.yaml", {"priced": priced, "lim": chat_entry(fake_upstream_url)})
    settings = make_settings(
        models,
        redis_url=redis_url,
        rate_limit_role_requests={"admin": "1000/minute"},
        rate_limit_model_requests={"lim": "1/minute"},
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=10) as c:
            yield c


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = (await client.get("/metrics")).text
    assert ADMIN_KEY not in text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_requests_tokens_and_cost_are_exported(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    answers = [await client.post("/v1/chat/completions", json=chat("priced"), headers=HEADERS) for _ in range(3)]
    assert [a.status_code for a in answers] == [200] * 3
    usage = [a.json()["usage"] for a in answers]
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return get(after, name, **labels) - get(before, name, **labels)

    assert delta("citadel_llm_requests_total", model="priced", endpoint="chat", status="200") == 3
    assert delta("citadel_llm_request_duration_seconds_count", model="priced", endpoint="chat") == 3
    prompt = sum(u["prompt_tokens"] for u in usage)
    completion = sum(u["completion_tokens"] for u in usage)
    assert delta("citadel_llm_prompt_tokens_total", model="priced") == prompt
    assert delta("citadel_llm_completion_tokens_total", model="priced") == completion
    assert delta("citadel_llm_cost_total", model="priced") == pytest.approx((prompt * 1.5 + completion * 3) / 1000)
    assert delta("http_requests_total", handler="/v1/chat/completions", method="POST", status="2xx") == 3


async def test_cache_hits_and_misses_are_counted(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    body = chat("priced", temperature=0, seed=7)
    results = []
    for _ in range(10):  # the answer is stored just after it is sent; ask until it comes from the cache
        results.append((await client.post("/v1/chat/completions", json=body, headers=HEADERS)).headers["x-cache"])
        if results[-1].lower().startswith("hit"):
            break
        await asyncio.sleep(0.05)
    after = await scrape(client)
    assert results[0].lower().startswith("miss") and results[-1].lower().startswith("hit")
    hits = get(after, "citadel_llm_cache_requests_total", model="priced", result="hit")
    misses = get(after, "citadel_llm_cache_requests_total", model="priced", result="miss")
    assert hits - get(before, "citadel_llm_cache_requests_total", model="priced", result="hit") == 1
    assert misses - get(before, "citadel_llm_cache_requests_total", model="priced", result="miss") == len(results) - 1


async def test_rate_limited_requests_are_counted_by_the_limit_that_refused(client: httpx.AsyncClient) -> None:
    if time.time() % 60 > 55:  # keep both requests inside one window of the per-minute counter
        await asyncio.sleep(60 - time.time() % 60 + 0.2)
    before = await scrape(client)
    first = await client.post("/v1/chat/completions", json=chat("lim"), headers=HEADERS)
    second = await client.post("/v1/chat/completions", json=chat("lim"), headers=HEADERS)
    assert (first.status_code, second.status_code) == (200, 429)
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return get(after, name, **labels) - get(before, name, **labels)

    assert delta("citadel_llm_rate_limited_total", model="lim", limit="model_requests") == 1
    assert delta("citadel_llm_requests_total", model="lim", endpoint="chat", status="429") == 1
