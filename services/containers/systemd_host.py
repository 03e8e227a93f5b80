"""The systemd test host: an image that stands in for a server installed as deploy/systemd/README.md says.

Two layers, neither of which reaches the network during `docker build`:

1. `SYSTEMD_HOST_BASE`, made from Debian's packages by services/containers/debian.py (the host's apt in a
   chroot, then `docker import`): systemd as init, PostgreSQL 15 and Redis 7 as Debian's own system services,
   Debian's Python 3.11 and the system libraries vLLM's CPU wheels load (those of `PYTHON_VLLM`).
2. docker/systemd-host.Dockerfile on top of it: the gateway's and vLLM's virtual environments copied from the
   project's images (`citadel/gateway`, `citadel/vllm-cpu`, which must exist already), the repository at
   /opt/citadel, then the README's install steps (user, settings, units, `systemctl enable`).

tests/containers/test_systemd.py boots the image with systemd as PID 1 and drives the units.
Standard library only, like the rest of services/containers.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import IO

from services.containers.debian import PYTHON_VLLM, DebianImage, DebianImageError, build
from services.containers.progress import say, step

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "systemd-host.Dockerfile"
TAG = "citadel/systemd-host:test"
GATEWAY_IMAGE = "citadel/gateway:0.1.0"
VLLM_IMAGE = "citadel/vllm-cpu:0.32.0"

SYSTEMD_HOST_BASE = DebianImage(
    tag="citadel/systemd-host-base:bookworm",
    packages=(
        # The interpreter both copied venvs point at (/usr/bin/python3.11) and the libraries of vLLM's wheels.
        *PYTHON_VLLM.packages,
        # systemd as PID 1 (/sbin/init), and the bus systemctl talks to.
        "systemd",
        "systemd-sysv",
        "dbus",
        # The gateway's database and Redis, as Debian packages them: each its own system service.
        "postgresql",
        "redis-server",
        # `wheel` as a .whl file: `pip install -e` of the project (the `citadel` console script) needs it at
        # build time, and no package index is reachable there (put on PYTHONPATH for that step only).
        "python3-wheel-whl",
        # What an operator uses on a host, and the test through `docker exec`: curl, ps.
        "curl",
        "procps",
    ),
)


def _missing_images(env: dict[str, str], tags: tuple[str, ...]) -> list[str]:
    return [
        tag
        for tag in tags
        if subprocess.run(["docker", "image", "inspect", tag], env=env, capture_output=True, check=False).returncode
    ]


def repository_files() -> list[str]:
    """The files `git clone` would give, plus the uncommitted ones (tracked or not, unless git-ignored)."""
    result = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise DebianImageError(f"git ls-files failed (the image copies the repository's files): {result.stderr}")
    return sorted({name for name in result.stdout.split("\0") if name and (ROOT / name).is_file()})


def repository_context(out: IO[bytes]) -> None:
    """The build context as a tar: the repository's files as a clone has them (`COPY . /opt/citadel`).

    Not the working directory: it also holds virtual environments, caches and docker/wheelhouse (1 GB of wheels
    for the other images), which .dockerignore cannot leave out without breaking those images' builds.
    Owner and times are fixed, so an unchanged file never changes the layer.
    """
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name in repository_files():
            info = tar.gettarinfo(str(ROOT / name), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            with (ROOT / name).open("rb") as handle:
                tar.addfile(info, handle)


def build_systemd_host(*, env: dict[str, str], cache: Path) -> str:
    """Build the package layer (unless current) and then docker/systemd-host.Dockerfile; returns the image tag.

    `env` reaches the engine (DOCKER_HOST); `cache` holds debootstrap's root filesystem (debian.py). The gateway
    and vLLM images are inputs, not built here: a clear error names the ones missing.
    """
    missing = _missing_images(env, (GATEWAY_IMAGE, VLLM_IMAGE))
    if missing:
        raise DebianImageError(
            f"{DOCKERFILE.name} copies the virtual environments of {', '.join(missing)}: build "
            "docker/gateway.Dockerfile and docker/vllm-cpu.Dockerfile first"
        )
    build(SYSTEMD_HOST_BASE, env=env, cache=cache)
    command = [
        "docker", "build",
        "--file", str(DOCKERFILE.relative_to(ROOT)),
        "--tag", TAG,
        "--build-arg", f"BASE_IMAGE={SYSTEMD_HOST_BASE.tag}",
        "--build-arg", f"GATEWAY_IMAGE={GATEWAY_IMAGE}",
        "--build-arg", f"VLLM_IMAGE={VLLM_IMAGE}",
        "-",  # the context: a tar on stdin (repository_context)
    ]  # fmt: skip
    # The legacy builder: no BuildKit frontend image to fetch, and `FROM ${ARG} AS name` works for COPY --from.
    build_env = {**env, "DOCKER_BUILDKIT": "0"}
    what = f"building {TAG} ({DOCKERFILE.relative_to(ROOT)}; 3 minutes when vLLM's 4 GB venv must be copied anew)"
    with step(what):
        with tempfile.TemporaryFile(dir=cache) as context:
            repository_context(context)
            context.seek(0)
            result = subprocess.run(command, env=build_env, stdin=context, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise DebianImageError(
                f"docker build of {TAG} failed ({result.returncode}):\n{result.stdout[-4000:]}{result.stderr[-3000:]}"
            )
    cached = result.stdout.count("Using cache")
    say(f"{TAG}: built ({cached} cached steps)")
    return TAG


if __name__ == "__main__":
    from services.containers.engine import cache_root

    engine_env = dict(os.environ)
    print(build_systemd_host(env=engine_env, cache=cache_root() / "images"))
