"""Which image each compose service runs here: the default when it is present or can be pulled, else a stand-in.

The plan for one machine and engine:
- base images: `python:3.11-slim-bookworm` when it can be had; otherwise stand-ins made from Debian's packages
  (services/containers/debian.py) and the wheelhouse (services/containers/wheelhouse.py), so the gateway and
  vLLM images build with no registry and no network in the build;
- Redis, PostgreSQL, Prometheus, Alertmanager: the default image, else a stand-in built from Debian's packages
  (services/containers/standins.py) with the same ports, volumes, users and healthchecks;
- Qdrant and Grafana: the default image, else the service is left out (no package anywhere has them): the
  gateway then keeps vectors in its embedded Qdrant, and the reason is recorded for the tests that need them.
The result is a set of compose variables (`*_IMAGE`) and, when services are left out, an override file.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.containers import debian, standins, wheelhouse
from services.containers.progress import say

DEFAULT_PYTHON_IMAGE = "python:3.11-slim-bookworm"
PULL_TIMEOUT_S = 300


@dataclass(frozen=True)
class Optional3rdParty:
    """A third-party service that has no stand-in: left out of the stack when its image cannot be had."""

    service: str
    variable: str
    default: str
    without_it: str


OPTIONAL = (
    Optional3rdParty("qdrant", "QDRANT_IMAGE", "qdrant/qdrant:v1.18.2-unprivileged",
                     "the gateway keeps vector collections in its embedded Qdrant (one worker)"),
    Optional3rdParty("grafana", "GRAFANA_IMAGE", "grafana/grafana:11.6.0",
                     "no dashboards (Prometheus and Alertmanager still run)"),
)  # fmt: skip


@dataclass
class ImagePlan:
    """Compose variables that pick the images, services left out (with why), and the override that leaves them out."""

    values: dict[str, str] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)

    def override_yaml(self) -> str:
        """A compose override file for the services left out ('' when none is)."""
        if not self.left_out:
            return ""
        lines = ["# Made by services/containers/images.py: services whose image cannot be had on this machine.",
                 "services:"]  # fmt: skip
        for service, reason in self.left_out.items():
            lines += [f"  # {reason}", f"  {service}:", "    profiles: [unavailable]"]
        if "qdrant" in self.left_out:
            # Without a Qdrant server the gateway uses its embedded store; its dependency is dropped.
            lines += ["  gateway:", "    environment:", '      QDRANT_URL: ""', "    depends_on:",
                      "      qdrant: {condition: service_healthy, required: false}"]  # fmt: skip
        return "\n".join(lines) + "\n"


def _docker(env: dict[str, str], *args: str, timeout_s: float | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["docker", *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(["docker", *args], 124, "", f"timed out after {timeout_s} s")


def present(env: dict[str, str], ref: str) -> bool:
    return _docker(env, "image", "inspect", ref).returncode == 0


def available(env: dict[str, str], ref: str) -> bool:
    """Is `ref` in the engine, or can it be pulled now? (A registry that cannot be reached answers at once.)"""
    if present(env, ref):
        return True
    say(f"pulling {ref} ...")
    started = time.monotonic()
    result = _docker(env, "pull", "--quiet", ref, timeout_s=PULL_TIMEOUT_S)
    if result.returncode != 0:
        say(f"{ref} cannot be pulled: {(result.stderr.strip().splitlines() or ['?'])[-1][:200]}")
    else:
        say(f"pulled {ref} in {time.monotonic() - started:.0f} s")
    return result.returncode == 0


class ImageUnavailable(RuntimeError):
    """An image the user chose (a value other than the default) is neither in the engine nor pullable."""


def _wanted(configured: dict[str, str], variable: str, default: str) -> tuple[str, bool]:
    """The image to try for `variable`, and whether the user chose it (a value other than the default, which
    .env.example also spells out: that one may still be replaced by a stand-in)."""
    value = configured.get(variable, "").strip()
    return (value, True) if value and value != default else (default, False)


def _chosen_or_default(env: dict[str, str], configured: dict[str, str], variable: str, default: str) -> bool:
    """True when the image to use is there: the user's choice (which must be there) or the default."""
    wanted, chosen = _wanted(configured, variable, default)
    if available(env, wanted):
        return True
    if chosen:
        raise ImageUnavailable(f"{variable}={wanted} is neither in the engine nor pullable")
    return False


def plan(env: dict[str, str], *, cache: Path, configured: dict[str, str] | None = None) -> ImagePlan:
    """Decide (and build what must be built) for every image of the stack. `configured`: the user's own values
    (their .env); an image the user chose is used as it is, never replaced by a stand-in."""
    configured = configured or {}
    result = ImagePlan()
    # The user's choices reach compose through .env itself; the plan adds only what it decides.
    if not _chosen_or_default(env, configured, "PYTHON_IMAGE", DEFAULT_PYTHON_IMAGE):
        say("no registry: the base images are made from Debian's packages, the wheels come from a wheelhouse")
        for image in (debian.PYTHON, debian.PYTHON_VLLM):
            debian.build(image, env=env, cache=cache / "images")
        result.values.update(PYTHON_IMAGE=debian.PYTHON.tag, VLLM_PYTHON_IMAGE=debian.PYTHON_VLLM.tag)
        wheelhouse.make(cache=cache)
    for standin in standins.STANDINS:
        if not _chosen_or_default(env, configured, standin.variable, standin.official):
            result.values[standin.variable] = standins.build_standin(standin, env=env, cache=cache / "images")
    for optional in OPTIONAL:
        if not _chosen_or_default(env, configured, optional.variable, optional.default):
            result.left_out[optional.service] = (
                f"{optional.service}: no image ({optional.default} cannot be pulled); {optional.without_it}"
            )
            say(f"leaving out {result.left_out[optional.service]}")
    return result
