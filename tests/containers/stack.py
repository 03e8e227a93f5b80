"""The compose stack for the containerized tests: is a Docker engine here, and the env file that runs the stack
in demo mode on free host ports under a project name of its own (a `docker compose up` beside it is untouched)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

from tests.conftest import free_port
from tests.support import compose
from tests.support.catalogs import ADMIN_KEY

# Every port compose.yaml publishes on the host: each gets a free one so nothing collides with a local stack.
PUBLISHED_PORTS = (
    "API_GATEWAY_PORT", "MIXTRAL_PORT", "HERMES_PORT", "OPENCHAT_PORT", "PHI3_PORT", "EMBED_PORT",
    "POSTGRES_PORT", "QDRANT_HTTP_PORT", "QDRANT_GRPC_PORT", "PROMETHEUS_PORT", "ALERTMANAGER_PORT", "GRAFANA_PORT",
)  # fmt: skip
DEMO_FILES = ["compose.yaml", "compose.demo.yaml"]


def docker_unavailable_reason() -> str | None:
    """Why the containerized tests cannot run here, or None when a Docker engine and compose are reachable."""
    if shutil.which("docker") is None:
        return "no docker client on this machine"
    import importlib

    try:
        sdk = importlib.import_module("docker")  # the Docker SDK, installed with testcontainers
    except ImportError:
        sdk = None
    # Without the SDK, `import docker` can find this repository's docker/ folder (a namespace package).
    from_env = getattr(sdk, "from_env", None)
    if from_env is None:
        return "testcontainers (and the docker SDK) are not installed: pip install -r requirements-dev.txt"
    try:
        from_env(timeout=5).ping()
    except Exception as exc:  # the SDK raises several unrelated types for "no engine"
        return f"no Docker engine reachable ({type(exc).__name__}); the compose files are checked by tests/unit"
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode != 0:
        return "the docker compose plugin is not installed"
    return None


def write_env_file(path: Path) -> dict[str, str]:
    """.env.example's values, the test's secrets and free ports: what a user's .env holds in demo mode."""
    values = {name: value for name, (value, commented) in compose.env_example().items() if not commented}
    values.update(
        COMPOSE_PROJECT_NAME=f"citadel-test-{uuid.uuid4().hex[:8]}",
        CITADEL_ADMIN_KEY=ADMIN_KEY,
        POSTGRES_PASSWORD=f"pw-{uuid.uuid4().hex}",
        GRAFANA_ADMIN_PASSWORD=f"pw-{uuid.uuid4().hex}",
        **{name: str(free_port()) for name in PUBLISHED_PORTS},
    )
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return values
