"""The whole compose stack in demo mode, brought up once per session with testcontainers' DockerCompose.

It provides the `gateway_url` and `client` fixtures of the e2e tier, so the same end-to-end tests run
against the containers. Without a Docker engine the tests here skip at collection (see test_stack.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.containers.stack import DEMO_FILES, docker_unavailable_reason, write_env_file
from tests.support.catalogs import ADMIN_KEY
from tests.support.compose import ROOT


# Package scope: the containers go away when this folder's tests are done, before the rest of the session.
@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, str]]]:
    reason = docker_unavailable_reason()
    if reason:
        pytest.skip(reason)
    from testcontainers.compose import DockerCompose

    env_file = tmp_path_factory.mktemp("compose") / "env"
    values = write_env_file(env_file)
    # `up --build --wait`: builds both images, then waits for every healthcheck (model servers included)
    # and for the one-shot migrate to exit 0; `down --volumes` afterwards.
    deployment = DockerCompose(
        context=str(ROOT), compose_file_name=DEMO_FILES, env_file=str(env_file), build=True, wait=True
    )
    try:
        deployment.start()
    except Exception:
        stdout, stderr = deployment.get_logs()
        print((stdout + stderr)[-20000:])
        deployment.stop()
        raise
    try:
        yield deployment, values
    finally:
        deployment.stop()


@pytest.fixture(scope="package")
def gateway_url(stack: tuple[Any, dict[str, str]]) -> str:
    # The env file gave the gateway a free host port; compose publishes it on every interface.
    _, values = stack
    return f"http://127.0.0.1:{values['API_GATEWAY_PORT']}"


@pytest.fixture(scope="package")
def client(gateway_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)
