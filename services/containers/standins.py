"""Stand-ins built from Debian's packages for compose.yaml's Redis, PostgreSQL, Prometheus and Alertmanager images."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from services.containers.debian import DebianImage, build
from services.containers.progress import step

ROOT = Path(__file__).resolve().parents[2]
# The build context of every stand-in: its Dockerfile and entrypoint scripts, nothing else.
CONTEXT = ROOT / "docker" / "standins"


class StandinBuildError(RuntimeError):
    """`docker build` of a stand-in failed: the message carries the tail of the build output."""


@dataclass(frozen=True)
class Standin:
    """One stand-in: the compose service it serves, the variable that selects that service's image, the image it
    stands in for, the Debian package layer it is built on, and the tag of the finished image."""

    service: str
    variable: str
    official: str
    packages: DebianImage
    tag: str

    @property
    def dockerfile(self) -> Path:
        return CONTEXT / f"{self.service}.Dockerfile"


STANDINS: tuple[Standin, ...] = (
    Standin(
        service="redis",
        variable="REDIS_IMAGE",
        official="redis:7.4-alpine",
        packages=DebianImage(tag="citadel/debian-redis:bookworm", packages=("redis-server",)),
        tag="citadel/standin-redis:7.0",
    ),
    Standin(
        service="postgres",
        variable="POSTGRES_IMAGE",
        official="postgres:18-bookworm",
        # Installed in two steps, as the official image does: postgresql-common first, then the setting that
        # stops postgresql-15's postinst from running initdb for a "main" cluster (its data and config would
        # sit in the image, unused: the entrypoint makes the cluster in the volume on first start), then the
        # server. Dropping the cluster afterwards (pg_dropcluster) would work too, but would run initdb for
        # nothing and leave the image's files depending on what it cleans up.
        packages=DebianImage(
            tag="citadel/debian-postgres:bookworm",
            packages=("postgresql-common",),
            setup=(
                "sed -ri 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*$/create_main_cluster = false/' "
                "/etc/postgresql-common/createcluster.conf",
                "grep -qx 'create_main_cluster = false' /etc/postgresql-common/createcluster.conf",
                "apt-get install -y -qq --no-install-recommends postgresql-15",
                "test ! -e /etc/postgresql/15/main && test ! -e /var/lib/postgresql/15/main",
            ),
        ),
        tag="citadel/standin-postgres:15",
    ),
    Standin(
        service="prometheus",
        variable="PROMETHEUS_IMAGE",
        official="prom/prometheus:v2.55.1",
        # wget: the healthcheck's client (the official image has busybox's).
        packages=DebianImage(tag="citadel/debian-prometheus:bookworm", packages=("prometheus", "wget")),
        tag="citadel/standin-prometheus:2.42",
    ),
    Standin(
        service="alertmanager",
        variable="ALERTMANAGER_IMAGE",
        official="prom/alertmanager:v0.28.1",
        packages=DebianImage(tag="citadel/debian-alertmanager:bookworm", packages=("prometheus-alertmanager", "wget")),
        tag="citadel/standin-alertmanager:0.25",
    ),
)


def build_standin(standin: Standin, *, env: dict[str, str], cache: Path) -> str:
    """Build the package layer (skipped when up to date), then the stand-in's Dockerfile on it; return its tag."""
    build(standin.packages, env=env, cache=cache)
    command = [
        "docker", "build",
        "-f", str(standin.dockerfile),
        "--build-arg", f"BASE_IMAGE={standin.packages.tag}",
        "-t", standin.tag,
        str(CONTEXT),
    ]  # fmt: skip
    # The legacy builder: it needs no BuildKit frontend image (none can be pulled here) and caches its layers.
    build_env = {**env, "DOCKER_BUILDKIT": "0"}
    with step(f"building {standin.tag} (stand-in for {standin.official})"):
        result = subprocess.run(command, env=build_env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            output = (result.stdout + result.stderr)[-4000:]
            raise StandinBuildError(f"docker build of {standin.tag} failed ({result.returncode}):\n{output}")
    return standin.tag
