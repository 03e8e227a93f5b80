"""The compose stack for real (demo mode): the e2e tier's checks against the containers, then what only a running
deployment shows: every container healthy, within the limits its mode sets, non-root; the schema migrated in the
postgres container; Prometheus scraping every target with the alert rules loaded."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import httpx
import pytest
import yaml

from tests.containers.compose_stack.conftest import Stack
from tests.containers.stack import MODEL_SERVICES
from tests.e2e.test_metric_names import (
    exercise,
    test_every_gateway_metric_used_by_alerts_and_dashboards_is_exported,
    test_every_vllm_metric_used_by_alerts_and_dashboards_is_exported,
)
from tests.e2e.test_models import (
    test_chat_completion,
    test_chat_completion_stream,
    test_embeddings_are_real_384_dimension_vectors,
    test_keys_roles_and_audit_through_the_real_stack,
    test_max_tokens_over_the_model_limit_is_400,
    test_models_list_has_every_model,
    test_rate_limit_and_cache_through_the_real_stack,
    test_request_id_is_echoed_through_the_real_stack,
    test_text_completion,
    test_text_completion_stream,
    test_unknown_model_is_404,
    test_wrong_key_is_401,
)
from tests.e2e.test_readiness import test_ready_reports_every_dependency_and_model_replica
from tests.support.catalogs import ADMIN_KEY
from tests.support.compose import ROOT
from tests.support.promql import scraped_names

# The first test waits for the images to build and every model server to become healthy.
pytestmark = [pytest.mark.containers, pytest.mark.timeout(3600)]

__all__ = [
    "test_chat_completion",
    "test_chat_completion_stream",
    "test_embeddings_are_real_384_dimension_vectors",
    "test_every_gateway_metric_used_by_alerts_and_dashboards_is_exported",
    "test_every_vllm_metric_used_by_alerts_and_dashboards_is_exported",
    "test_keys_roles_and_audit_through_the_real_stack",
    "test_max_tokens_over_the_model_limit_is_400",
    "test_models_list_has_every_model",
    "test_rate_limit_and_cache_through_the_real_stack",
    "test_ready_reports_every_dependency_and_model_replica",
    "test_request_id_is_echoed_through_the_real_stack",
    "test_text_completion",
    "test_text_completion_stream",
    "test_unknown_model_is_404",
    "test_wrong_key_is_401",
]
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# Each model service's published-port variable: the vLLM servers are reached from the host through these.
PORT_VARIABLE = {"vllm-mixtral": "MIXTRAL_PORT", "vllm-hermes": "HERMES_PORT", "vllm-openchat": "OPENCHAT_PORT",
                 "vllm-phi3": "PHI3_PORT", "vllm-embed": "EMBED_PORT"}  # fmt: skip


def exec_in(stack: Stack, service: str, *command: str) -> str:
    container = stack.compose.get_container(service)
    result = subprocess.run(
        ["docker", "exec", str(container.ID), *command], env=stack.env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{service}: {' '.join(command)} failed: {result.stderr}"
    return result.stdout


def inspect(stack: Stack, service: str) -> dict[str, Any]:
    container = stack.compose.get_container(service, include_all=True)
    output = subprocess.run(
        ["docker", "inspect", str(container.ID)], env=stack.env, capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(output.stdout)[0]
    return result


@pytest.fixture(scope="module")
def exported(stack: Stack, gateway_url: str) -> dict[str, set[str]]:
    """The e2e metric-name check's samples: the gateway's, and every model container's through its published port."""
    exercise(gateway_url)
    vllm: set[str] = set()
    for service in MODEL_SERVICES:
        response = httpx.get(f"{stack.url(PORT_VARIABLE[service])}/metrics", timeout=30)
        assert response.status_code == 200, f"{service}: {response.status_code}"
        vllm |= scraped_names(response.text)
    gateway = httpx.get(f"{gateway_url}/metrics", headers=ADMIN, timeout=30)
    return {"gateway": scraped_names(gateway.text), "vllm": vllm}


def long_running(stack: Stack) -> list[str]:
    out = subprocess.run(
        [*stack.config.command(), "ps", "--services", "--status", "running"],
        env=stack.env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sorted(out.split())


def test_every_long_running_service_is_healthy(stack: Stack) -> None:
    services = long_running(stack)
    assert {"gateway", "redis", "postgres", "prometheus", "alertmanager", *MODEL_SERVICES} <= set(services)
    for service in services:
        assert inspect(stack, service)["State"]["Health"]["Status"] == "healthy", service


def cgroup_limits(stack: Stack, service: str) -> tuple[float, int]:
    """(CPUs, memory bytes) as the container's own cgroup reports them (cgroup v2 or v1)."""
    script = (
        "if [ -f /sys/fs/cgroup/cpu.max ]; then cat /sys/fs/cgroup/cpu.max /sys/fs/cgroup/memory.max; "
        "else echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us); "
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; fi"
    )
    cpu_line, memory_line = exec_in(stack, service, "sh", "-c", script).split("\n")[:2]
    quota, period = cpu_line.split()
    return int(quota) / int(period), int(memory_line)


def test_model_containers_run_within_the_cgroup_limits_of_their_mode(stack: Stack) -> None:
    # Demo mode (compose.demo.yaml): every model server gets CITADEL_DEMO_CPUS and CITADEL_DEMO_MEMORY.
    cpus = float(stack.config.values["CITADEL_DEMO_CPUS"])
    memory = stack.config.values["CITADEL_DEMO_MEMORY"]
    expected_memory = int(float(memory[:-1]) * {"g": 2**30, "m": 2**20}[memory[-1].lower()])
    for service in MODEL_SERVICES:
        assert cgroup_limits(stack, service) == (cpus, expected_memory), service
        added = inspect(stack, service)["HostConfig"].get("CapAdd") or []
        assert {"SYS_NICE", "CAP_SYS_NICE"} & set(added), added


def test_every_container_runs_as_a_non_root_user(stack: Stack) -> None:
    for service in long_running(stack):
        # The main process (PID 1, or the process that docker-init started as PID 1's child).
        statuses = exec_in(
            stack, service, "sh", "-c", "grep '^Uid:' /proc/1/status; grep -h '^Uid:' /proc/[0-9]*/status"
        )
        uids = {line.split()[1] for line in statuses.splitlines()}
        assert "0" not in uids, f"{service} runs a process as root: {statuses}"


def test_migrate_exited_cleanly_and_the_llm_schema_is_in_citadel_ai(stack: Stack) -> None:
    migrate = inspect(stack, "migrate")
    assert migrate["State"]["Status"] == "exited" and migrate["State"]["ExitCode"] == 0
    values = stack.config.values
    query = "select count(*) from information_schema.tables where table_schema = 'llm'"
    tables = exec_in(
        stack, "postgres", "psql", "-U", values["POSTGRES_USER"], "-d", values["POSTGRES_DB"], "-Atc", query
    )
    assert int(tables.strip()) >= 6, tables
    version = exec_in(
        stack, "postgres", "psql", "-U", values["POSTGRES_USER"], "-d", values["POSTGRES_DB"], "-Atc",
        "select version_num from llm.alembic_version",
    )  # fmt: skip
    assert version.strip(), "no Alembic revision recorded"


def configured_alerts() -> set[str]:
    """Every alert of config/prometheus/rules/*.yml (what Prometheus must have loaded)."""
    names: set[str] = set()
    for path in (ROOT / "config" / "prometheus" / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {rule["alert"] for rule in group["rules"] if "alert" in rule}
    return names


def test_prometheus_scrapes_every_target_and_loaded_the_alert_rules(stack: Stack, gateway_url: str) -> None:
    prometheus = stack.url("PROMETHEUS_PORT")
    expected = {"gateway:8000"} | {f"{service}:{port}" for service, port in (
        ("vllm-mixtral", 11400), ("vllm-hermes", 11401), ("vllm-openchat", 11402), ("vllm-phi3", 11403),
        ("vllm-embed", 11404),
    )}  # fmt: skip
    health: dict[str, str] = {}
    deadline = time.monotonic() + 120  # the scrape interval is 15 s
    while time.monotonic() < deadline:
        targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        health = {target["labels"]["instance"]: target["health"] for target in targets}
        if expected <= {instance for instance, state in health.items() if state == "up"}:
            break
        time.sleep(3)
    assert expected <= {instance for instance, state in health.items() if state == "up"}, health
    assert all(state == "up" for state in health.values()), health
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"] if rule["type"] == "alerting"}
    assert loaded >= configured_alerts(), sorted(configured_alerts() - loaded)
    alertmanagers = httpx.get(f"{prometheus}/api/v1/alertmanagers", timeout=10).json()["data"]["activeAlertmanagers"]
    assert alertmanagers, "Prometheus has no Alertmanager"


def test_readiness_is_healthy_with_every_dependency(stack: Stack, gateway_url: str) -> None:
    response = httpx.get(f"{gateway_url}/health/ready", headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "healthy", body
    assert {"postgres", "redis", "qdrant"} <= set(body["checks"])
