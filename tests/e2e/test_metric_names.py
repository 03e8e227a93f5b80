"""Every metric name an alert rule or a Grafana dashboard reads exists in what the real stack exports.

The live gateway's /metrics and each real vLLM server's /metrics are scraped after the test has caused
what it cheaply can (answers, a stream, a cache hit, a 429, a rating, a readiness check). Counters of
events it does not cause (upstream errors and retries, Redis/PostgreSQL/Qdrant failures) must be exported
at zero from start-up by the gateway. vLLM servers are found through the gateway's replica labels.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.support.catalogs import ADMIN_KEY
from tests.support.promql import scraped_names, used_metric_names

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MESSAGES = [{"role": "user", "content": "Name three colours."}]


def post(url: str, body: dict[str, Any], headers: dict[str, str] = ADMIN) -> httpx.Response:
    return httpx.post(url, json=body, headers=headers, timeout=120)


def exercise(gateway_url: str) -> None:
    """Cause the events whose series appear only when they happen."""
    httpx.get(f"{gateway_url}/health/ready", timeout=30)  # sets citadel_llm_dependency_up
    chat = f"{gateway_url}/v1/chat/completions"
    # temperature 0: cacheable, so the second identical request is a cache hit.
    body = {"model": "phi3", "messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    first = post(chat, body)
    assert first.status_code == 200, first.text
    for _ in range(10):  # the answer is stored just after it has been sent
        if post(chat, body).headers.get("x-cache") == "HIT":
            break
        time.sleep(0.2)
    with httpx.stream("POST", chat, json={**body, "stream": True, "temperature": 0.7}, headers=ADMIN, timeout=120) as s:
        assert s.status_code == 200
        s.read()
    embedded = post(f"{gateway_url}/v1/embeddings", {"model": "embed", "input": ["one", "two"]})
    assert embedded.status_code == 200, embedded.text
    # A key allowed one request a minute: its second request is refused (citadel_llm_rate_limited_total). A few
    # more tries: on a loaded machine a Redis call may pass its timeout, and limits then fail open (by policy).
    created = post(f"{gateway_url}/admin/keys", {"name": "metrics-limited", "role": "user", "requests_per_minute": 1})
    assert created.status_code == 201, created.text
    limited = {"Authorization": f"Bearer {created.json()['key']}"}
    statuses: list[int] = []
    while len(statuses) < 8 and 429 not in statuses:
        statuses.append(post(chat, {**body, "max_tokens": 2}, limited).status_code)
        time.sleep(0.3)
    assert statuses[-1] == 429, statuses
    # A rating of the first answer (citadel_llm_feedback_total); its audit row is written within a second or so.
    request_id = first.headers["x-request-id"]
    for _ in range(50):
        rated = post(f"{gateway_url}/v1/feedback", {"request_id": request_id, "rating": "up"})
        if rated.status_code != 404:
            break
        time.sleep(0.2)
    assert rated.status_code in (200, 201), rated.text


def scrape(url: str) -> set[str]:
    response = httpx.get(url, headers=ADMIN, timeout=30)
    assert response.status_code == 200, f"{url}: {response.status_code} {response.text[:300]}"
    return scraped_names(response.text)


@pytest.fixture(scope="module")
def exported(gateway_url: str) -> dict[str, set[str]]:
    """Sample names from the gateway and from every vLLM server it routes to, after the events."""
    exercise(gateway_url)
    gateway_metrics = httpx.get(f"{gateway_url}/metrics", headers=ADMIN, timeout=30).text
    replicas = {
        line.split('replica="', 1)[1].split('"', 1)[0]
        for line in gateway_metrics.splitlines()
        if line.startswith("citadel_llm_replica_up{") and 'replica="' in line
    }
    assert replicas, "the gateway exports no citadel_llm_replica_up samples: cannot find the vLLM servers"
    return {
        "gateway": scraped_names(gateway_metrics),
        "vllm": set().union(*(scrape(f"http://{replica}/metrics") for replica in sorted(replicas))),
    }


def test_every_gateway_metric_used_by_alerts_and_dashboards_is_exported(exported: dict[str, set[str]]) -> None:
    used = {name: where for name, where in used_metric_names().items() if not name.startswith("vllm:")}
    missing = {name: sorted(where) for name, where in used.items() if name not in exported["gateway"]}
    assert not missing, f"used in config/ but not in the gateway's /metrics: {missing}"


def test_every_vllm_metric_used_by_alerts_and_dashboards_is_exported(exported: dict[str, set[str]]) -> None:
    used = {name: where for name, where in used_metric_names().items() if name.startswith("vllm:")}
    missing = {name: sorted(where) for name, where in used.items() if name not in exported["vllm"]}
    assert not missing, f"used in config/ but not in the vLLM servers' /metrics: {missing}"
