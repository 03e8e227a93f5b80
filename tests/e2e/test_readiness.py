"""Readiness of the real stack: every dependency and every model's replica (real vLLM servers) checked."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.e2e


def test_ready_reports_every_dependency_and_model_replica(gateway_url: str) -> None:
    response = httpx.get(f"{gateway_url}/health/ready", timeout=10)
    assert response.status_code == 200
    document = response.json()
    checks = document["checks"]
    assert checks["postgres"]["status"] == "healthy" and checks["redis"]["status"] == "healthy"
    for model in ("mixtral", "hermes", "openchat", "phi3", "embed"):
        check = checks[f"model:{model}"]
        assert check["status"] == "healthy", check
        assert check["replicas"][0]["breaker"] == "closed"
    assert document["status"] in ("healthy", "degraded"), document
    assert "127.0.0.1" not in response.text, "readiness is public: no host names"
