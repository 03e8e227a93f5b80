"""/metrics with the gateway running as two worker processes: whichever worker answers a scrape, the counts
are those of both workers added up, and they survive a worker being killed and restarted."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.catalogs import ADMIN_KEY, chat_entry
from tests.support.gateway import gateway_env, running_gateway, wait_for_startups

ROOT = Path(__file__).resolve().parents[2]
BATCH = 30
CHAT = {"model": "ok", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def two_worker_gateway(tmp_path: Path, fake_upstream_url: str) -> Iterator[tuple[str, Path]]:
    env = gateway_env(
        tmp_path, {"ok": chat_entry(fake_upstream_url)}, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics")
    )
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "counter_999999.db").write_bytes(b"stale")  # an earlier run's: must be cleared
    with running_gateway(tmp_path, env, workers=2) as gateway:
        yield gateway.url, gateway.log


def request_lines(log: Path) -> list[dict[str, object]]:
    entries = [orjson.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [entry for entry in entries if entry.get("logger") == "gateway.requests"]


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def send_batch(url: str) -> None:
    # New connections for each request, so the kernel spreads them over both workers.
    limits = httpx.Limits(max_connections=BATCH, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        answers = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=CHAT, headers=headers) for _ in range(BATCH))
        )
    assert [a.status_code for a in answers] == [200] * BATCH


async def scrapes(url: str, times: int) -> list[str]:
    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        return [(await client.get("/metrics")).text for _ in range(times)]


async def test_counts_add_up_across_workers(two_worker_gateway: tuple[str, Path]) -> None:
    url, log = two_worker_gateway
    sent = 0
    for _ in range(10):  # until both workers have served some (the kernel picks the worker)
        await send_batch(url)
        sent += BATCH
        if len({entry["pid"] for entry in request_lines(log)}) >= 2:
            break
    served_by = {entry["pid"] for entry in request_lines(log)}
    assert len(served_by) == 2, "both workers served requests"
    # Every scrape (each may land on either worker) reports both workers' requests.
    for text in await scrapes(url, 6):
        assert sample(text, "citadel_llm_requests_total", model="ok", endpoint="chat", status="200") == sent
        assert sample(text, "citadel_llm_request_duration_seconds_count", model="ok", endpoint="chat") == sent
        assert sample(text, "citadel_llm_completion_tokens_total", model="ok") > 0
        chat = {"handler": "/v1/chat/completions", "method": "POST", "status": "2xx"}
        assert sample(text, "http_requests_total", **chat) == sent
        assert "counter_999999" not in text and ADMIN_KEY not in text

    # A worker dies (uvicorn starts another): what it counted still counts, and scrapes keep working.
    victim = int(next(iter(served_by)))  # type: ignore[call-overload]
    os.kill(victim, signal.SIGKILL)
    wait_for_startups(log, 3)
    await send_batch(url)
    sent += BATCH
    for text in await scrapes(url, 4):
        assert sample(text, "citadel_llm_requests_total", model="ok", endpoint="chat", status="200") == sent
        assert "citadel_llm_audit_queue_depth" in text
    # The dead worker's live gauges (summed over live workers only) were dropped; its counters were kept.
    files = [path.name for path in (log.parent / "metrics").iterdir()]
    assert not [name for name in files if name.startswith("gauge_live") and name.endswith(f"_{victim}.db")]
    assert f"counter_{victim}.db" in files and "counter_999999.db" not in files
