"""Gateway metrics in process: what one request records, bounded labels, cost, the status page's windows, and
who may read /metrics and the status data (a setting each; deny by default in code)."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from gateway.app import create_app
from gateway.auth import Principal, Role
from gateway.catalog import load_catalog
from gateway.context import RequestContext, Usage
from gateway.observability.metrics import LATENCY_BUCKETS
from gateway.observability.requests import RequestObserver
from gateway.observability.window import BOUNDS, ModelCounts, Snapshot, StatusBoard, quantile, snapshot
from tests.conftest import make_settings
from tests.support.catalogs import ADMIN_KEY, chat_entry, write_models_file

SECRET = "sk-do-not-leak-0123456789"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def observer(tmp_path: Path) -> RequestObserver:
    entry = {**chat_entry("http://127.0.0.1:9"), "price_per_1k_prompt_tokens": 2, "price_per_1k_completion_tokens": 4}
    catalog = load_catalog(write_models_file(tmp_path / "models.yaml", {"priced": entry}), env={})
    return RequestObserver(catalog)


def scope(path: str = "/v1/chat/completions") -> dict[str, Any]:
    route = type("Route", (), {"path": path})()
    return {"type": "http", "method": "POST", "path": path, "route": route}


def state(
    *,
    usage: dict[str, int] | None = None,
    rate_limited: str | None = None,
    request_id: str = "rid-unit-1",
    **extra: Any,
) -> RequestContext:
    principal = Principal(key_id=uuid.uuid4(), name="team-a", role=Role.USER)
    ctx = RequestContext(request_id=request_id, started=0.0, principal=principal, rate_limited_by=rate_limited, **extra)
    ctx.usage = Usage(**(usage or {}))
    return ctx


def observe(
    observer: RequestObserver,
    scope: dict[str, Any],
    ctx: RequestContext,
    *,
    status: int,
    latency_s: float,
    ttft_s: float | None,
) -> None:
    """What the request layer does once a request is over."""
    ctx.status = status
    if ttft_s is not None:
        ctx.stream, ctx.first_byte = True, ctx.started + ttft_s
    observer.observe(scope, ctx, latency_s=latency_s)


def test_one_request_counts_status_latency_tokens_and_cost(observer: RequestObserver) -> None:
    before = {
        "requests": value("citadel_llm_requests_total", model="priced", endpoint="chat", status="200"),
        "latency": value("citadel_llm_request_duration_seconds_count", model="priced", endpoint="chat"),
        "le_0.3": value("citadel_llm_request_duration_seconds_bucket", model="priced", endpoint="chat", le="0.3"),
        "prompt": value("citadel_llm_prompt_tokens_total", model="priced"),
        "completion": value("citadel_llm_completion_tokens_total", model="priced"),
        "cost": value("citadel_llm_cost_total", model="priced"),
        "tps": value("citadel_llm_tokens_per_second_count", model="priced"),
        "ttft": value("citadel_llm_time_to_first_token_seconds_count", model="priced"),
    }
    usage = {"prompt_tokens": 1000, "completion_tokens": 500}
    observe(observer, scope(), state(model="priced", usage=usage, stream=True), status=200, latency_s=0.25, ttft_s=0.1)
    assert value("citadel_llm_requests_total", model="priced", endpoint="chat", status="200") == before["requests"] + 1
    assert value("citadel_llm_request_duration_seconds_count", model="priced", endpoint="chat") == before["latency"] + 1
    le = value("citadel_llm_request_duration_seconds_bucket", model="priced", endpoint="chat", le="0.3")
    assert le == before["le_0.3"] + 1
    assert value("citadel_llm_prompt_tokens_total", model="priced") == before["prompt"] + 1000
    assert value("citadel_llm_completion_tokens_total", model="priced") == before["completion"] + 500
    # 1000 prompt tokens at 2 per 1k plus 500 completion tokens at 4 per 1k.
    assert value("citadel_llm_cost_total", model="priced") == pytest.approx(before["cost"] + 4.0)
    assert value("citadel_llm_tokens_per_second_count", model="priced") == before["tps"] + 1
    assert value("citadel_llm_time_to_first_token_seconds_count", model="priced") == before["ttft"] + 1


def test_cache_results_and_rate_limits_are_counted_by_kind(observer: RequestObserver) -> None:
    hits = value("citadel_llm_cache_requests_total", model="priced", result="hit")
    misses = value("citadel_llm_cache_requests_total", model="priced", result="miss")
    cost = value("citadel_llm_cost_total", model="priced")
    usage = {"prompt_tokens": 10, "completion_tokens": 10}
    observe(
        observer, scope(), state(model="priced", cache_hit=True, usage=usage), status=200, latency_s=0.01, ttft_s=None
    )
    observe(observer, scope(), state(model="priced", cache_hit=False), status=200, latency_s=0.01, ttft_s=None)
    observe(observer, scope(), state(model="priced"), status=200, latency_s=0.01, ttft_s=None)  # not cacheable
    assert value("citadel_llm_cache_requests_total", model="priced", result="hit") == hits + 1
    assert value("citadel_llm_cache_requests_total", model="priced", result="miss") == misses + 1
    assert value("citadel_llm_cost_total", model="priced") == cost  # a cached answer cost no model time
    for limit in ("requests", "model_requests", "tokens"):
        before = value("citadel_llm_rate_limited_total", model="priced", limit=limit)
        observe(observer, scope(), state(model="priced", rate_limited=limit), status=429, latency_s=0.001, ttft_s=None)
        assert value("citadel_llm_rate_limited_total", model="priced", limit=limit) == before + 1


def test_labels_stay_bounded(observer: RequestObserver) -> None:
    """Unknown model names, raw paths, keys and request ids never become label values."""
    odd = state(model=f"no-such-model-{uuid.uuid4()}", request_id=SECRET)
    observe(observer, scope(f"/v1/whatever/{uuid.uuid4()}"), odd, status=404, latency_s=0.001, ttft_s=None)
    observe(observer, scope("/v1/models"), state(), status=200, latency_s=0.001, ttft_s=None)
    assert value("citadel_llm_requests_total", model="other", endpoint="other", status="404") >= 1
    assert value("citadel_llm_requests_total", model="none", endpoint="other", status="200") >= 1
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name.startswith("citadel_llm_"):
                text = str(sample.labels)
                assert SECRET not in text and "no-such-model" not in text and "team-a" not in text
                assert set(sample.labels.get("endpoint", "chat").split()) <= {
                    "chat",
                    "completions",
                    "embeddings",
                    "other",
                }


def test_quantiles_follow_prometheus_interpolation() -> None:
    buckets = [0.0] * len(BOUNDS)
    # 100 requests: 50 under 0.1 s, 45 between 0.2 and 0.3 s, 5 between 1 and 1.5 s.
    for i, bound in enumerate(BOUNDS):
        buckets[i] = (50 if bound >= 0.1 else 0) + (45 if bound >= 0.3 else 0) + (5 if bound >= 1.5 else 0)
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.95, buckets) == pytest.approx(0.3)
    assert quantile(0.99, buckets) == pytest.approx(1.4)
    assert quantile(0.5, [0.0] * len(BOUNDS)) is None
    only_inf = [0.0] * (len(BOUNDS) - 1) + [3.0]
    assert quantile(0.5, only_inf) == LATENCY_BUCKETS[-1]
    assert BOUNDS[-1] == math.inf


def test_window_compares_the_newest_snapshot_with_the_oldest_in_the_window(tmp_path: Path) -> None:
    catalog = load_catalog(write_models_file(tmp_path / "models.yaml", {"m": chat_entry("http://127.0.0.1:9")}), env={})
    board = StatusBoard(catalog, window_s=60, interval_s=5)
    old = ModelCounts(requests=10, errors=1, completion_tokens=100, cache_hits=1, cache_misses=1)
    old.buckets = [0.0] * 3 + [10.0] * (len(BOUNDS) - 3)
    new = ModelCounts(requests=30, errors=3, completion_tokens=700, cache_hits=4, cache_misses=2)
    new.buckets = [0.0] * 3 + [30.0] * (len(BOUNDS) - 3)
    board._ring.append(Snapshot(at=0.0, models={"m": ModelCounts()}, replicas={}))  # left the window
    board._ring.append(Snapshot(at=100.0, models={"m": old}, replicas={}))
    row = board._row("m", "M", 100, new, old, 60.0, Snapshot(at=160.0, models={}, replicas={"m": {"a": 1, "b": 0}}))
    assert row["requests"] == 20
    assert row["error_rate"] == pytest.approx(0.1)
    assert row["tokens_per_s"] == pytest.approx(10.0)
    assert row["cache_hit_ratio"] == pytest.approx(0.75)
    assert row["health"] == "degraded"
    assert 100 < row["p50_ms"] <= 200 and row["latency_target_ms"] == 100


def test_snapshot_reads_the_registry_exposition() -> None:
    shot = snapshot(REGISTRY.collect(), at=0.0)
    assert isinstance(shot.models, dict)


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    return write_models_file(tmp_path / "models.yaml", {"chat-a": chat_entry("http://127.0.0.1:9")})


async def gateway(models_file: Path, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(models_file, **settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def test_metrics_are_public_by_default_and_need_a_key_when_configured(models_file: Path) -> None:
    async for client in gateway(models_file):
        await client.get("/v1/models", headers=ADMIN)
        scraped = await client.get("/metrics")
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        assert "citadel_llm_requests_total" in scraped.text and "http_requests_total" in scraped.text
        assert "citadel_llm_audit_queue_depth" in scraped.text
        assert ADMIN_KEY not in scraped.text
    async for client in gateway(models_file, metrics_public=False):
        refused = await client.get("/metrics")
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        assert (await client.get("/metrics", headers=ADMIN)).status_code == 200


async def test_status_page_is_served_but_its_data_needs_a_key_unless_public(models_file: Path) -> None:
    async for client in gateway(models_file):
        page = await client.get("/status")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "<script src" not in page.text and "<link" not in page.text  # no external assets
        assert (await client.get("/status/data")).status_code == 401
        data = (await client.get("/status/data", headers=ADMIN)).json()
        assert [row["model"] for row in data["models"]] == ["chat-a"]
        assert data["models"][0]["latency_target_ms"] == 100
    async for client in gateway(models_file, status_page_public=True):
        assert (await client.get("/status/data")).status_code == 200


def test_polling_the_data_does_not_shorten_the_window(tmp_path: Path) -> None:
    catalog = load_catalog(
        write_models_file(tmp_path / "models.yaml", {"never-probed": chat_entry("http://127.0.0.1:9")}), env={}
    )
    board = StatusBoard(catalog, window_s=60, interval_s=5)
    board.take()
    for _ in range(100):  # many browsers polling
        data = board.data()
    assert len(board._ring) == 1
    assert data["models"][0]["model"] == "never-probed" and data["models"][0]["health"] == "unknown"
