"""The compose stack for real (demo mode): the e2e tier's checks against the containers, then what only a
running deployment shows: every container healthy within its limits, non-root, metrics scraped by Prometheus.

Skipped at collection, with the reason, where no Docker engine is reachable (the compose files are still
checked there by tests/unit/test_deployment.py).
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import httpx
import pytest

from tests.containers.stack import docker_unavailable_reason
from tests.support.catalogs import ADMIN_KEY

_REASON = docker_unavailable_reason()
if _REASON:
    pytest.skip(_REASON, allow_module_level=True)

# The same end-to-end checks as the e2e tier (every model, stream and not, completions, embeddings, models,
# 404/401, keys and their allow-list, audit rows, limits and cache), collected here against this stack's
# `gateway_url` and `client` fixtures (tests/containers/conftest.py).
from tests.e2e.test_models import (  # noqa: E402
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

# The first test waits for the images to build and every model server to become healthy.
pytestmark = [pytest.mark.containers, pytest.mark.timeout(3600)]

__all__ = [
    "test_chat_completion",
    "test_chat_completion_stream",
    "test_embeddings_are_real_384_dimension_vectors",
    "test_keys_roles_and_audit_through_the_real_stack",
    "test_max_tokens_over_the_model_limit_is_400",
    "test_models_list_has_every_model",
    "test_rate_limit_and_cache_through_the_real_stack",
    "test_request_id_is_echoed_through_the_real_stack",
    "test_text_completion",
    "test_text_completion_stream",
    "test_unknown_model_is_404",
    "test_wrong_key_is_401",
]
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _inspect(deployment: Any, service: str) -> dict[str, Any]:
    container = deployment.get_container(service)
    output = subprocess.run(["docker", "inspect", container.ID], capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(output.stdout)[0]
    return result


@pytest.mark.parametrize(
    "service", ["vllm-mixtral", "vllm-hermes", "vllm-openchat", "vllm-phi3", "vllm-embed", "gateway"]
)
def test_every_long_running_service_is_healthy(stack: tuple[Any, dict[str, str]], service: str) -> None:
    deployment, _ = stack
    assert _inspect(deployment, service)["State"]["Health"]["Status"] == "healthy"


def test_model_containers_run_within_their_cgroup_limits(stack: tuple[Any, dict[str, str]]) -> None:
    deployment, values = stack
    for service in ("vllm-mixtral", "vllm-embed"):
        host_config = _inspect(deployment, service)["HostConfig"]
        assert host_config["NanoCpus"] == int(float(values["CITADEL_DEMO_CPUS"]) * 1e9)
        assert host_config["Memory"] > 0
        assert "SYS_NICE" in (host_config.get("CapAdd") or [])


@pytest.mark.parametrize("service", ["gateway", "vllm-phi3"])
def test_images_run_as_a_non_root_user(stack: tuple[Any, dict[str, str]], service: str) -> None:
    deployment, _ = stack
    stdout, _, code = deployment.exec_in_container(["id", "-u"], service_name=service)
    assert code == 0 and stdout.strip() != "0"


def test_migrations_ran_once_and_exited_cleanly(stack: tuple[Any, dict[str, str]]) -> None:
    deployment, _ = stack
    migrate = deployment.get_container("migrate", include_all=True)
    assert migrate.State == "exited" and migrate.ExitCode == 0


def test_readiness_reports_every_dependency_and_model(gateway_url: str) -> None:
    response = httpx.get(f"{gateway_url}/health/ready", headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "healthy", body


def test_gateway_metrics_count_requests_and_prometheus_scrapes_every_target(
    stack: tuple[Any, dict[str, str]], gateway_url: str
) -> None:
    _, values = stack
    body = {"model": "phi3", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    assert httpx.post(f"{gateway_url}/v1/chat/completions", json=body, headers=ADMIN, timeout=60).status_code == 200
    metrics = httpx.get(f"{gateway_url}/metrics", headers=ADMIN, timeout=10)
    assert metrics.status_code == 200
    assert "citadel_llm_requests_total{" in metrics.text and 'model="phi3"' in metrics.text
    prometheus = f"http://127.0.0.1:{values['PROMETHEUS_PORT']}"
    up: dict[str, str] = {}
    for _ in range(60):  # the scrape interval is 15 s
        result = httpx.get(f"{prometheus}/api/v1/query", params={"query": "up"}, timeout=10).json()
        up = {sample["metric"]["instance"]: sample["value"][1] for sample in result["data"]["result"]}
        if len(up) >= 6 and set(up.values()) == {"1"}:
            break
        time.sleep(2)
    expected = {"gateway:8000"} | {f"vllm-{m}:{p}" for m, p in (
        ("mixtral", 11400), ("hermes", 11401), ("openchat", 11402), ("phi3", 11403), ("embed", 11404)
    )}  # fmt: skip
    assert {instance for instance, value in up.items() if value == "1"} >= expected, up
