"""`citadel validate` against the real stack (the demo model, real embeddings, PostgreSQL, Redis, embedded Qdrant)
and a real Prometheus scraping it with the repository's rules: both reports written, their shape, the demo caveat.

Kept short (3 requests per model, 3 s of throughput) and bounded: the run must end within 60 s. The stack's
latencies are not asserted (the demo model on a shared 2-core machine): a latency target may pass or fail, and
the exit status must agree with the verdict.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.validate.database import DATABASE_QUERIES
from gateway.validate.options import Options
from gateway.validate.progress import Progress
from gateway.validate.report import DEMO_WARNING, JSON_NAME, MARKDOWN_NAME, SCHEMA
from gateway.validate.runner import validate
from tests.conftest import free_port
from tests.support import processes
from tests.support.catalogs import ADMIN_KEY
from tests.support.promql import PROMETHEUS_DIR, require_binary

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]  # the first e2e test of a session starts the stack

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
RUN_TIMEOUT_S = 60
CHAT_MODELS = {"mixtral", "hermes", "openchat", "phi3"}


@pytest.fixture(scope="module")
def prometheus_url(gateway_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus scraping the stack's gateway every second, with the repository's rules."""
    binary = require_binary("prometheus")
    workdir = tmp_path_factory.mktemp("validate-prometheus")
    target = gateway_url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS_DIR / "rules" / "*.yml")],
        "scrape_configs": [
            {"job_name": "citadel-gateway", "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    prometheus = processes.start(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={url.removeprefix('http://')}",
        ],
        env=dict(os.environ),
        cwd=workdir,
        log=workdir / "prometheus.log",
        health_url=f"{url}/-/ready",
    )
    try:
        yield url
    finally:
        processes.stop(prometheus)


@pytest.fixture(scope="module")
def validation(gateway_url: str, prometheus_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of `citadel validate`, short: its exit status, output, and both reports."""
    out = tmp_path_factory.mktemp("validate-out")
    command = [
        sys.executable, "-m", "gateway", "validate", "--url", gateway_url, "--key", ADMIN_KEY,
        "--requests", "3", "--duration", "3", "--config", str(ROOT / "config" / "models.yaml"),
        "--profile", "local", "--prometheus-url", prometheus_url, "--out", str(out),
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S + 30)
    elapsed = time.monotonic() - started
    assert result.returncode in (0, 1), f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert (out / JSON_NAME).exists() and (out / MARKDOWN_NAME).exists(), result.stderr
    # A copy beside the status page's screenshot, for a look after the run (docs/operations.md shows one).
    ARTIFACTS.mkdir(exist_ok=True)
    for name in (JSON_NAME, MARKDOWN_NAME):
        shutil.copyfile(out / name, ARTIFACTS / name)
    return {
        "code": result.returncode,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "elapsed_s": elapsed,
        "json": json.loads((out / JSON_NAME).read_text()),
        "markdown": (out / MARKDOWN_NAME).read_text(),
    }


def _targets(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {target["id"]: target for target in document["targets"]}


def test_the_run_is_short_and_its_exit_status_is_the_verdict(validation: dict[str, Any]) -> None:
    assert validation["elapsed_s"] < RUN_TIMEOUT_S, validation["stderr"]
    document = validation["json"]
    assert document["verdict"] == ("pass" if validation["code"] == 0 else "fail")
    counts = {status: sum(t["status"] == status for t in document["targets"]) for status in ("pass", "fail", "skip")}
    assert document["summary"] == counts
    # Progress went to stderr (plain lines: not a terminal), the summary and the report paths to stdout.
    assert "[validate] 100%" in validation["stderr"]
    assert MARKDOWN_NAME in validation["stdout"] and JSON_NAME in validation["stdout"]


def test_the_json_report_has_the_environment_models_shapes_and_targets(validation: dict[str, Any]) -> None:
    document = validation["json"]
    assert document["schema"] == SCHEMA
    environment = document["environment"]
    assert environment["cpu_count"] >= 1 and environment["memory_gib"] > 0 and environment["python"].startswith("3.")
    assert environment["gateway_version"] and environment["gateway_version_source"] == "/openapi.json"
    assert environment["gateway_same_host"] is True
    assert environment["readiness"]["overall"] in ("healthy", "degraded")
    shapes = document["request_shapes"]
    assert shapes["requests_per_model"] == 3 and shapes["duration_s"] == 3 and shapes["concurrency"] == 4
    assert shapes["chat"]["max_tokens"] == 16 and shapes["chat"]["temperature"] > 0
    assert "never answers" in shapes["cache"] and shapes["cache"].endswith("X-Cache: HIT: 0")
    models = {m["name"]: m for m in document["models"]}
    assert set(models) == CHAT_MODELS | {"embed"}
    for model in models.values():
        assert model["latency_target_ms"] > 0 and model["target_source"] == "/status/data"
    started, finished = document["started_at"], document["finished_at"]
    assert started < finished and document["duration_s"] > 0


def test_every_model_is_timed_against_its_target(validation: dict[str, Any]) -> None:
    targets = _targets(validation["json"])
    for name in CHAT_MODELS | {"embed"}:
        for label in ("p50", "p95"):
            target = targets[f"latency.{name}.{label}"]
            assert target["status"] in ("pass", "fail") and target["unit"] == "ms"
            assert target["details"]["count"] == 3 and target["details"]["errors"] == 0, target
            assert target["details"]["cache_hits"] == 0
            assert target["value"] > 0 and target["status"] == (
                "pass" if target["value"] <= target["limit"] else "fail"
            )
    throughput = targets["throughput"]
    assert throughput["status"] == "pass", throughput  # no errors (no --min-rps)
    assert throughput["details"]["model"] == "phi3" and throughput["details"]["succeeded"] > 0
    assert throughput["details"]["completion_tokens"] > 0


def test_postgres_vectors_and_prometheus_are_checked(validation: dict[str, Any], gateway_url: str) -> None:
    targets = _targets(validation["json"])
    assert targets["gateway.reachable"]["status"] == "pass"
    for name in ("audit", "usage"):
        target = targets[f"postgres.admin.{name}"]
        assert target["status"] in ("pass", "fail") and target["limit"] == 100 and target["details"]["errors"] == 0
    assert targets["postgres.direct"]["status"] == "skip"
    vectors = targets["vectors.roundtrip"]
    assert vectors["status"] == "pass", vectors
    assert set(vectors["details"]["steps_ms"]) == {"create", "upsert", "search", "delete"}
    assert vectors["details"]["top_hit"] == "doc-2"  # real embeddings rank the bread document first
    # The temporary collection is gone.
    listing = httpx.get(f"{gateway_url}/v1/vectors/collections", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert vectors["details"]["collection"] not in {c["name"] for c in listing.json()["data"]}
    for name in ("gateway_up", "metrics", "rules"):
        assert targets[f"prometheus.{name}"]["status"] == "pass", targets[f"prometheus.{name}"]
    assert targets["grafana.dashboards"]["status"] == "skip"


def test_both_reports_say_the_demo_models_latencies_mean_nothing(validation: dict[str, Any]) -> None:
    document = validation["json"]
    models = {m["name"]: m for m in document["models"]}
    assert all(models[name]["demo"] is True for name in CHAT_MODELS)
    assert models["embed"]["demo"] is False  # the real all-MiniLM-L6-v2
    assert DEMO_WARNING in document["demo_caveat"]
    lines = validation["markdown"].splitlines()
    assert lines[0] == "# Citadel LLM Server: validation report"
    assert lines[2].startswith("> **Demo model.**") and DEMO_WARNING in lines[2]
    assert "| PASS | vector store: create, upsert 3, search, delete |" in validation["markdown"]
    for heading in ("## Targets", "## Environment", "## Models", "## Request shapes"):
        assert heading in lines
    assert DEMO_WARNING in validation["stdout"]
    assert ADMIN_KEY not in validation["markdown"] + json.dumps(document)  # the key is never written down


async def test_direct_database_timings_and_an_unreachable_grafana(gateway_url: str, postgres_url: str) -> None:
    """In process, one model only: SELECTs timed on a real PostgreSQL (the test tier's own, migrated: what is
    checked is the timing, not this stack's rows), and a Grafana nobody answers for, which is skipped."""
    options = Options(
        url=gateway_url, key=ADMIN_KEY, requests=2, warmup=0, duration_s=1, models=["embed"],
        config_path=ROOT / "config" / "models.yaml", profile="local", profile_basis="--profile",
        database_url=postgres_url, grafana_url=f"http://admin:secret@127.0.0.1:{free_port()}",
    )  # fmt: skip
    report = await validate(options, Progress(io.StringIO(), tty=False))
    targets = {target.id: target for target in report.targets}
    for name in DATABASE_QUERIES:
        target = targets[f"postgres.direct.{name}"]
        assert target.status in ("pass", "fail") and target.details["count"] == 2, target
        assert target.limit == 100 and target.value is not None and target.value > 0
    assert targets["throughput"].status == "skip"  # no chat model among --models
    grafana = targets["grafana.dashboards"]
    assert grafana.status == "skip" and "not reachable" in grafana.reason
    assert "secret" not in report.to_json()  # credentials in a URL never reach the report
    assert [m.name for m in report.models] == ["embed"] and report.demo_caveat() is None
