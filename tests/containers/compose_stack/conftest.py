"""The whole compose stack in demo mode, built and brought up once for this folder with testcontainers' DockerCompose.

It provides the `gateway_url` and `client` fixtures of the e2e tier, so the same end-to-end tests run against the
containers. The fault tests (test_faults.py) run last: they kill, pause and restart containers.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest
from testcontainers.compose import DockerCompose

from services.containers.images import ImagePlan
from services.containers.progress import say
from tests.containers import stack as stacks
from tests.support.catalogs import ADMIN_KEY
from tests.support.compose import ROOT


@dataclass
class Stack:
    """The running stack: testcontainers' handle, what compose was given, and the tier's timings."""

    compose: DockerCompose
    config: stacks.StackConfig
    env: dict[str, str]
    logs: Path
    timings: dict[str, float] = field(default_factory=dict)

    def url(self, variable: str) -> str:
        return f"http://127.0.0.1:{self.config.values[variable]}"

    def needs(self, service: str) -> None:
        """Skip the calling test, naming the reason, when `service` was left out of this stack."""
        if service in self.config.left_out:
            pytest.skip(self.config.left_out[service])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The fault tests change the stack (kill, pause, restart, down/up): after every other test of this folder, and
    # still inside it (the hook sees the whole session's items: only this folder's places are reordered).
    here = Path(__file__).parent
    places = [index for index, item in enumerate(items) if here in item.path.parents]
    ours = sorted((items[index] for index in places), key=lambda item: item.path.name == "test_faults.py")
    for index, item in zip(places, ours, strict=True):
        items[index] = item


@pytest.fixture(scope="package")
def stack(
    docker_env: dict[str, str], image_plan: ImagePlan, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("compose")
    config = stacks.configure(folder, image_plan)
    deployment = DockerCompose(
        context=str(ROOT), compose_file_name=config.files, env_file=[str(config.env_file)], build=False, wait=False
    )
    running = Stack(compose=deployment, config=config, env=docker_env, logs=folder)
    for reason in config.left_out.values():
        say(f"left out of the stack: {reason}")
    stacks.remove_leftovers(docker_env)
    started = time.monotonic()
    try:
        running.timings.update({f"build {k}": v for k, v in stacks.build(config, env=docker_env, logs=folder).items()})
        up_started = time.monotonic()
        deployment.start()  # `up --detach`: the wait below prints each container's progress
        healthy = stacks.wait_healthy(config, env=docker_env)
        running.timings["up until every container is healthy"] = time.monotonic() - up_started
        say("healthy after: " + ", ".join(f"{service} {seconds:.0f} s" for service, seconds in sorted(healthy.items())))
    except Exception:
        deployment.stop()
        raise
    try:
        yield running
    finally:
        with_tests = time.monotonic() - started
        with contextlib.suppress(Exception):  # for the session's log scan (tests/support/logscan.py)
            stacks.run(
                config, "logs", "--no-color", "gateway", env=docker_env, log=folder / "gateway.log", timeout_s=120
            )
        deployment.stop()  # `down --volumes`
        # Images that this run's builds replaced: the disk would otherwise grow by gigabytes a run.
        subprocess.run(["docker", "image", "prune", "--force"], env=docker_env, capture_output=True, check=False)
        figures = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in running.timings.items())
        say(f"containers tier timings: {figures}, build + up + tests {with_tests:.0f} s")


@pytest.fixture(scope="package")
def gateway_url(stack: Stack) -> str:
    # The env file gave the gateway a free host port; compose publishes it on every interface.
    return stack.url("API_GATEWAY_PORT")


@pytest.fixture(scope="package")
def client(gateway_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)
