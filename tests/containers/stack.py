"""The compose stack of the containerized tests: its env file (demo mode, free host ports, a project name of its
own, the images this machine can run), the builds, and the wait for every container's health, with progress."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from services.containers.images import ImagePlan
from services.containers.progress import say, step
from tests.conftest import free_port
from tests.support import compose
from tests.support.catalogs import ADMIN_KEY

# Every port compose.yaml publishes on the host: each gets a free one so nothing collides with a local stack.
PUBLISHED_PORTS = (
    "API_GATEWAY_PORT", "MIXTRAL_PORT", "HERMES_PORT", "OPENCHAT_PORT", "PHI3_PORT", "EMBED_PORT",
    "POSTGRES_PORT", "QDRANT_HTTP_PORT", "QDRANT_GRPC_PORT", "PROMETHEUS_PORT", "ALERTMANAGER_PORT", "GRAFANA_PORT",
)  # fmt: skip
DEMO_FILES = ["compose.yaml", "compose.demo.yaml"]
MODEL_SERVICES = ("vllm-mixtral", "vllm-hermes", "vllm-openchat", "vllm-phi3", "vllm-embed")
# Five model servers starting at once on 2 cores take minutes; the first run builds the images first.
HEALTHY_TIMEOUT_S = 1500


@dataclass
class StackConfig:
    """What `docker compose` is given: files, env file and its values, and the services left out (why)."""

    files: list[str]
    env_file: Path
    values: dict[str, str]
    left_out: dict[str, str] = field(default_factory=dict)

    def command(self) -> list[str]:
        files = [arg for name in self.files for arg in ("-f", name)]
        return ["docker", "compose", *files, "--env-file", str(self.env_file)]


def configure(folder: Path, plan: ImagePlan) -> StackConfig:
    """.env.example's values, the test's secrets, free ports and the image plan: what a user's .env holds."""
    values = {name: value for name, (value, commented) in compose.env_example().items() if not commented}
    values.update(
        COMPOSE_PROJECT_NAME=f"citadel-test-{uuid.uuid4().hex[:8]}",
        CITADEL_ADMIN_KEY=ADMIN_KEY,
        POSTGRES_PASSWORD=f"pw-{uuid.uuid4().hex}",
        GRAFANA_ADMIN_PASSWORD=f"pw-{uuid.uuid4().hex}",
        **{name: str(free_port()) for name in PUBLISHED_PORTS},
        **plan.values,
    )
    values.pop("COMPOSE_FILE", None)  # the files are given with -f
    env_file = folder / "env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    files = list(DEMO_FILES)
    if plan.left_out:
        override = folder / "compose.unavailable.yaml"
        override.write_text(plan.override_yaml())
        files.append(str(override))
    return StackConfig(files=files, env_file=env_file, values=values, left_out=dict(plan.left_out))


def run(config: StackConfig, *args: str, env: dict[str, str], log: Path | None = None, timeout_s: float = 3600) -> str:
    """A `docker compose` command; its output goes to `log` when given; a failure raises with the output's tail."""
    result = subprocess.run(
        [*config.command(), *args], env=env, cwd=compose.ROOT, capture_output=True, text=True, timeout=timeout_s,
        check=False,
    )  # fmt: skip
    if log is not None:
        log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"docker compose {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout


def remove_leftovers(env: dict[str, str]) -> None:
    """Containers and volumes of earlier test stacks (a run that was killed): they would restart with the engine
    and take memory and ports from this one."""
    listed = subprocess.run(
        ["docker", "ps", "--all", "--format", '{{.ID}} {{.Label "com.docker.compose.project"}}'],
        env=env, capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    projects = {line.split()[1] for line in listed.splitlines() if len(line.split()) == 2}
    for project in sorted(p for p in projects if p.startswith("citadel-test-")):
        say(f"removing the containers and volumes of an earlier test stack: {project}")
        subprocess.run(
            ["docker", "compose", "--project-name", project, "down", "--volumes", "--remove-orphans"],
            env=env, capture_output=True, check=False, timeout=300,
        )  # fmt: skip


def build(config: StackConfig, *, env: dict[str, str], logs: Path) -> dict[str, float]:
    """Build the gateway image and the vLLM image (every model service shares it), each timed; seconds by image."""
    timings: dict[str, float] = {}
    for service, image in (("gateway", "citadel/gateway"), ("vllm-phi3", "citadel/vllm-cpu")):
        started = time.monotonic()
        with step(f"building {image} (docker compose build {service}; the log: {logs / (service + '-build.log')})"):
            run(config, "build", "--progress", "plain", service, env=env, log=logs / f"{service}-build.log")
        timings[image] = time.monotonic() - started
    return timings


def states(config: StackConfig, *, env: dict[str, str]) -> dict[str, tuple[str, str, int]]:
    """Every container of the project: service -> (state, health, exit code)."""
    out = run(config, "ps", "--all", "--format", "json", env=env, timeout_s=60)
    rows = [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
    if len(rows) == 0 and out.strip().startswith("["):
        rows = json.loads(out)
    return {row["Service"]: (row["State"], row.get("Health") or "", int(row.get("ExitCode") or 0)) for row in rows}


def wait_healthy(config: StackConfig, *, env: dict[str, str], timeout_s: float = HEALTHY_TIMEOUT_S) -> dict[str, float]:
    """Wait until every long-running container is healthy and the one-shot migrate exited 0, printing each one's
    progress; seconds to healthy by service. Fails at once when a container exits or turns unhealthy."""
    started = time.monotonic()
    healthy_after: dict[str, float] = {}
    seen: dict[str, tuple[str, str, int]] = {}
    while True:
        current = states(config, env=env)
        elapsed = time.monotonic() - started
        for service, state in sorted(current.items()):
            if seen.get(service) != state:
                say(f"[{elapsed:4.0f} s] {service}: {state[0]}{' (' + state[1] + ')' if state[1] else ''}")
                seen[service] = state
            running, health, code = state
            if service == "migrate":
                if running == "exited" and code != 0:
                    raise RuntimeError(f"migrate exited with {code}:\n{logs_tail(config, 'migrate', env=env)}")
                if running == "exited":
                    healthy_after.setdefault(service, elapsed)
            elif running in ("exited", "dead", "restarting") or health == "unhealthy":
                raise RuntimeError(f"{service} is {running}/{health}:\n{logs_tail(config, service, env=env)}")
            elif health == "healthy":
                healthy_after.setdefault(service, elapsed)
        if current and set(healthy_after) == set(current):
            return healthy_after
        if elapsed > timeout_s:
            waiting = sorted(set(current) - set(healthy_after))
            raise RuntimeError(f"not healthy after {timeout_s} s: {waiting}\n" + "\n".join(
                logs_tail(config, service, env=env) for service in waiting))  # fmt: skip
        time.sleep(5)


def logs_tail(config: StackConfig, service: str, *, env: dict[str, str], lines: int = 60) -> str:
    try:
        return f"--- {service}:\n" + run(
            config, "logs", "--no-color", "--tail", str(lines), service, env=env, timeout_s=60
        )
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return f"--- {service}: no logs ({exc})"
