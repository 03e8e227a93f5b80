"""`python -m gateway doctor` as an operator runs it, in a process of its own: against a healthy setup (real
PostgreSQL and Redis, the fake upstream as the model replica, a weights folder), against broken ones (a missing
weights path, PostgreSQL down, a port taken, a replica down), and with --url against a real gateway process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.support import processes
from tests.support.catalogs import ADMIN_KEY, chat_entry, write_models_file
from tests.support.gateway import gateway_env

ROOT = Path(__file__).resolve().parents[2]
# Variables of the developer's setup that would change what the doctor sees.
_FOREIGN = ("DATABASE_URL", "CITADEL_DATABASE_URL", "REDIS_URL", "CITADEL_REDIS_URL", "QDRANT_URL", "CITADEL_PROFILE")


def doctor(
    workdir: Path, models: dict[str, dict[str, object]], *args: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    """`citadel doctor` in `workdir` (no developer .env there) with these models and settings."""
    env = {name: value for name, value in os.environ.items() if name not in _FOREIGN}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "CITADEL_ADMIN_KEY": ADMIN_KEY,
            "CITADEL_CONFIG_PATH": str(write_models_file(workdir / "models.yaml", models)),
            "CITADEL_PROFILE": "",
            "API_GATEWAY_PORT": str(free_port()),
            "CITADEL_AUDIT_SPOOL_DIR": str(workdir / "spool"),
            "CITADEL_QDRANT_PATH": str(workdir / "qdrant"),
            "CITADEL_CACHE_DIR": str(workdir / "cache"),
            **settings,
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "gateway", "doctor", *args],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )


def findings(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert result.stderr == "", result.stderr  # never a traceback
    document = json.loads(result.stdout)
    assert document["exit_status"] == result.returncode
    return {finding["check"]: finding for finding in document["findings"]}


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    folder = tmp_path / "weights" / "Phi-3-mini"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 4096)
    return folder


def _model(backend: str, weights: str) -> dict[str, object]:
    return {**chat_entry(backend, upstream_model="upstream-ok"), "weights": weights}


@pytest.fixture
def listening() -> Iterator[list[int]]:
    """Ports held by sockets of this process that listen and never answer (a port "taken" by something)."""
    sockets = []
    for _ in range(2):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sockets.append(sock)
    try:
        yield [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def test_healthy_setup_exits_0(
    tmp_path: Path, weights: Path, postgres_url: str, redis_url: str, fake_upstream_url: str
) -> None:
    result = doctor(
        tmp_path,
        {"phi3": _model(fake_upstream_url, str(weights))},
        "--json",
        DATABASE_URL=postgres_url,
        REDIS_URL=redis_url,
    )
    found = findings(result)
    assert result.returncode == 0, result.stdout
    assert [check for check, f in found.items() if f["status"] == "fail"] == []
    assert found["settings"]["status"] == found["models file"]["status"] == "ok"
    postgres = found["postgres"]
    assert postgres["status"] == "ok" and postgres["latency_ms"] is not None and "PostgreSQL " in postgres["detail"]
    assert found["postgres clock"]["status"] == "ok"
    assert found["migrations"]["status"] == "ok" and "at head" in found["migrations"]["detail"]
    assert found["redis"]["status"] == "ok" and "Redis " in found["redis"]["detail"]
    assert found["qdrant"]["status"] == "ok"
    # The fake upstream answers /health but does not list models (vLLM does): a warning, not a failure.
    assert found["replica phi3[0]"]["status"] == "warn" and found["replica phi3[0]"]["latency_ms"] is not None
    upstream_port = fake_upstream_url.rsplit(":", 1)[1]
    assert found[f"port {upstream_port} (phi3)"]["status"] == "ok"
    assert "answers /health" in found[f"port {upstream_port} (phi3)"]["detail"]
    assert found["weights phi3"]["status"] == "ok" and str(weights) in found["weights phi3"]["detail"]
    assert found["audit spool"]["status"] == "ok" and "empty" in found["audit spool"]["detail"]
    assert found["cpu"]["status"] in ("ok", "warn") and "versions" in found


def test_missing_weights_fail_naming_the_variable(tmp_path: Path, fake_upstream_url: str) -> None:
    missing = tmp_path / "not-downloaded"
    result = doctor(
        tmp_path,
        {"mixtral": _model(fake_upstream_url, "${DOCTOR_MIXTRAL_WEIGHTS}")},
        "--json",
        DOCTOR_MIXTRAL_WEIGHTS=str(missing),
    )
    found = findings(result)
    assert result.returncode == 1
    weights = found["weights mixtral"]
    assert weights["status"] == "fail" and str(missing) in weights["detail"]
    assert "DOCTOR_MIXTRAL_WEIGHTS" in weights["fix"] and "docs/configuration.md#real-weights" in weights["fix"]


def test_postgres_down_fails_with_the_fix(tmp_path: Path, weights: Path, fake_upstream_url: str) -> None:
    closed = free_port()
    result = doctor(
        tmp_path,
        {"phi3": _model(fake_upstream_url, str(weights))},
        "--json",
        DATABASE_URL=f"postgresql://citadel:do-not-print@127.0.0.1:{closed}/citadel_ai",
    )
    found = findings(result)
    assert result.returncode == 1
    postgres = found["postgres"]
    assert postgres["status"] == "fail" and f"127.0.0.1:{closed}" in postgres["detail"]
    assert "connection refused" in postgres["detail"]
    assert "start PostgreSQL" in postgres["fix"] and "DATABASE_URL" in postgres["fix"]
    assert "do-not-print" not in result.stdout
    assert "migrations" not in found  # not checked without a server; the postgres finding says why


def test_ports_taken_and_replica_down(tmp_path: Path, weights: Path, listening: list[int]) -> None:
    squatted, gateway_port = listening
    dead = free_port()
    models = {
        "phi3": _model(f"http://127.0.0.1:{squatted}", str(weights)),
        "hermes": _model(f"http://127.0.0.1:{dead}", str(weights)),
    }
    result = doctor(tmp_path, models, "--json", "--timeout", "1", API_GATEWAY_PORT=str(gateway_port))
    found = findings(result)
    assert result.returncode == 1
    me = f"pid {os.getpid()}"
    taken = found[f"port {squatted} (phi3)"]
    assert taken["status"] == "fail" and me in taken["detail"] and f"kill {os.getpid()}" in taken["fix"]
    assert found["replica phi3[0]"]["status"] == "fail" and "no answer within 1 s" in found["replica phi3[0]"]["detail"]
    gateway = found[f"port {gateway_port} (gateway)"]
    assert gateway["status"] == "fail" and me in gateway["detail"] and "API_GATEWAY_PORT" in gateway["fix"]
    down = found["replica hermes[0]"]
    assert down["status"] == "fail" and "connection refused" in down["detail"]
    assert "make run" in down["fix"] and "systemctl start citadel-vllm@hermes" in down["fix"]
    assert found[f"port {dead} (hermes)"]["status"] == "ok"  # free: the replica finding says to start it


def test_text_report(tmp_path: Path, weights: Path) -> None:
    result = doctor(tmp_path, {"phi3": _model(f"http://127.0.0.1:{free_port()}", str(weights))}, "--timeout", "1")
    assert result.returncode == 1 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith("citadel doctor: host ") and "CHECK" in lines[2] and "DETAIL" in lines[2]
    assert any(line.startswith("fail  replica phi3[0]") for line in lines)
    assert any(line.strip().startswith("fix: start it: `make run`") for line in lines)
    assert "\033[" not in result.stdout  # not a terminal: no colour
    assert lines[-1].endswith("something is wrong (exit status 1)")


def test_url_mode_against_a_real_gateway(tmp_path: Path) -> None:
    """Healthy (exit 0), a refused key, the replica killed (exit 1, with the fix), the gateway stopped."""
    port = free_port()
    upstream_url = f"http://127.0.0.1:{port}"
    env = {name: value for name, value in os.environ.items() if name not in _FOREIGN}
    env["PYTHONPATH"] = str(ROOT)
    upstream = processes.start(
        [sys.executable, "-m", "services.fake_upstream", "--port", str(port)],
        env=env,
        cwd=ROOT,
        log=tmp_path / "upstream.log",
        health_url=f"{upstream_url}/health",
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "doctor", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    models = {"ok": chat_entry(upstream_url, upstream_model="upstream-ok")}
    settings = {"CITADEL_HEALTH_INTERVAL_S": "0.3", "CITADEL_READINESS_CACHE_S": "0"}
    gateway_port = free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    try:
        # Started here rather than with tests.support.gateway: a loaded machine may need more than its 30 s.
        gateway = processes.start(
            [sys.executable, "-m", "gateway", "serve", "--port", str(gateway_port)],
            env=gateway_env(tmp_path, models, **settings),
            cwd=tmp_path,
            log=tmp_path / "gateway.log",
            health_url=f"{gateway_url}/health",
            timeout_s=120,
        )
        try:
            healthy = run("--url", gateway_url, "--key", ADMIN_KEY, "--json")
            found = findings(healthy)
            assert healthy.returncode == 0, healthy.stdout
            assert found["gateway"]["status"] == "ok" and found["gateway"]["latency_ms"] is not None
            assert found["readiness"]["status"] in ("ok", "warn")  # warn: audit rows spooled (no database)
            assert found["ready model ok"]["status"] == "ok" and "replica 0 up" in found["ready model ok"]["detail"]
            assert found["models api"]["status"] == "ok" and "ok" in found["models api"]["detail"]

            (tmp_path / "host").mkdir()  # on the gateway's host: its port is held by the gateway, as it should be
            on_host = findings(doctor(tmp_path / "host", models, "--json", API_GATEWAY_PORT=str(gateway_port)))
            assert on_host[f"port {gateway_port} (gateway)"]["status"] == "ok"
            assert "the gateway listens" in on_host[f"port {gateway_port} (gateway)"]["detail"]

            refused = run("--url", gateway_url, "--key", "ck_wrong-key-0123456789", "--json")
            assert refused.returncode == 1
            assert findings(refused)["models api"]["status"] == "fail"

            processes.stop(upstream)
            deadline = time.monotonic() + 15
            while processes.answers(f"{gateway_url}/health/ready") and time.monotonic() < deadline:
                time.sleep(0.2)  # 503 once the probe has seen the only replica go
            env["CITADEL_ADMIN_KEY"] = ADMIN_KEY  # the default key
            dead = run("--url", gateway_url, "--json")
            found = findings(dead)
            assert dead.returncode == 1
            model = found["ready model ok"]
            assert model["status"] == "fail" and "replica 0 down" in model["detail"]
            assert "docker compose up -d vllm-ok" in model["fix"] and "make run" in model["fix"]
            assert found["readiness"]["status"] == "fail" and found["models api"]["status"] == "ok"
        finally:
            processes.stop(gateway)
    finally:
        processes.stop(upstream)

    down = run("--url", gateway_url, "--json")
    assert down.returncode == 1
    assert "start the gateway" in findings(down)["gateway"]["fix"]


async def test_postgres_and_redis_findings_in_process(tmp_path: Path, postgres_url: str, redis_url: str) -> None:
    """The failures a real server gives: a database that is not there, a wrong password, a slow Redis."""
    from sqlalchemy.engine import make_url

    from gateway.doctor.services import check_postgres, check_redis
    from tests.conftest import make_settings

    models = tmp_path / "m.yaml"
    url = make_url(postgres_url)
    missing = url.set(database="citadel_doctor_missing").render_as_string(hide_password=False)
    [finding] = await check_postgres(make_settings(models, database_url=missing), timeout_s=5)
    assert finding.status == "fail"
    assert "does not exist" in finding.detail and "citadel migrate" in finding.fix
    wrong = url.set(password="not-the-password").render_as_string(hide_password=False)
    [finding] = await check_postgres(make_settings(models, database_url=wrong), timeout_s=5)
    assert finding.status == "fail" and "login refused" in finding.detail and "password" in finding.fix
    assert "not-the-password" not in finding.detail
    [finding] = await check_redis(make_settings(models, redis_url=redis_url, redis_timeout_ms=0.0001), timeout_s=5)
    assert finding.status == "warn" and "CITADEL_REDIS_TIMEOUT_MS" in finding.detail
