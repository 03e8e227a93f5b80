"""A real Prometheus (Debian's package) scrapes a real gateway process and evaluates the repository's rules."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.support import processes
from tests.support.catalogs import ADMIN_KEY, chat_entry, write_models_file
from tests.support.promql import PROMETHEUS_DIR, require_binary, rules

ROOT = Path(__file__).resolve().parents[2]
MODEL = "phi3"  # a model of config/models.yaml, so the generated latency target applies to it
SCRAPE_TIMEOUT_S = 30


@dataclass
class Monitored:
    gateway_url: str
    prometheus_url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=5)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]["result"]  # type: ignore[no-any-return]

    def wait_for(self, expr: str, *, timeout_s: float = SCRAPE_TIMEOUT_S) -> list[dict[str, Any]]:
        """Poll until the query returns a sample (the next scrape or rule evaluation, every second here)."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.25)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory, fake_upstream_url: str) -> Iterator[Monitored]:
    prometheus_binary = require_binary("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    gateway_port, prometheus_port = free_port(), free_port()
    models = write_models_file(workdir / "models.yaml", {MODEL: chat_entry(fake_upstream_url)})
    gateway = processes.start(
        [sys.executable, "-m", "gateway", "serve", "--port", str(gateway_port)],
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "CITADEL_ADMIN_KEY": ADMIN_KEY,
            "CITADEL_CONFIG_PATH": str(models),
            "CITADEL_PROFILE": "",
            "CITADEL_AUDIT_SPOOL_DIR": str(workdir / "audit-spool"),
            "CITADEL_METRICS_PUBLIC": "true",
        },
        cwd=workdir,  # not the repository: the developer's .env stays unread
        log=workdir / "gateway.log",
        health_url=f"http://127.0.0.1:{gateway_port}/health",
    )
    # The repository's scrape job and rules, with a 1 s interval and this test's gateway as the target.
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS_DIR / "rules" / "*.yml")],
        "scrape_configs": [
            {
                "job_name": "citadel-gateway",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{gateway_port}"]}],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    try:
        prometheus = processes.start(
            [
                prometheus_binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            env=dict(os.environ),
            cwd=workdir,
            log=workdir / "prometheus.log",
            health_url=f"{prometheus_url}/-/ready",
        )
    except Exception:
        processes.stop(gateway)
        raise
    try:
        yield Monitored(gateway_url=f"http://127.0.0.1:{gateway_port}", prometheus_url=prometheus_url)
    finally:
        processes.stop(prometheus)
        processes.stop(gateway)


def chat(monitored: Monitored) -> None:
    response = httpx.post(
        f"{monitored.gateway_url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def test_prometheus_scrapes_the_gateway(monitored: Monitored) -> None:
    [up] = monitored.wait_for('up{job="citadel-gateway"} == 1')
    assert up["value"][1] == "1"


def test_a_gateway_metric_reads_back_through_prometheus(monitored: Monitored) -> None:
    for _ in range(3):
        chat(monitored)
    expr = f'sum(citadel_llm_requests_total{{model="{MODEL}", endpoint="chat", status="200"}}) >= 3'
    [sample] = monitored.wait_for(expr)
    assert float(sample["value"][1]) >= 3
    # The latency histogram arrives as buckets; a quantile of it is a number of seconds.
    [p50] = monitored.wait_for(
        f'histogram_quantile(0.5, sum by (le) (citadel_llm_request_duration_seconds_bucket{{model="{MODEL}"}}))'
    )
    assert 0 < float(p50["value"][1]) < 10


def test_the_repository_rules_load_and_evaluate_without_errors(monitored: Monitored) -> None:
    chat(monitored)
    # The generated target series is recorded for this model.
    [target] = monitored.wait_for(f'citadel_llm:latency_target_seconds{{model="{MODEL}"}}')
    assert float(target["value"][1]) > 0
    expected = {rule.name for rule in rules()}
    deadline = time.monotonic() + SCRAPE_TIMEOUT_S
    while True:
        response = httpx.get(f"{monitored.prometheus_url}/api/v1/rules", timeout=5)
        loaded = [rule for group in response.json()["data"]["groups"] for rule in group["rules"]]
        # A rule not evaluated yet has the zero time as its last evaluation.
        pending = [rule for rule in loaded if rule.get("lastEvaluation", "0001").startswith("0001")]
        if (loaded and not pending) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert {rule["name"] for rule in loaded} == expected
    # An evaluation error (say, many-to-many matching on real labels) shows as health "err".
    broken = {rule["name"]: rule.get("lastError") for rule in loaded if rule["health"] != "ok"}
    assert broken == {}
    # The gateway answers quickly here: no alert fires.
    firing = [rule["name"] for rule in loaded if rule.get("state") == "firing"]
    assert firing == []
