"""The stand-in images (services/containers/standins.py) checked without a Docker engine: one for each compose
service whose image is selectable by a variable, Dockerfiles that build offline on their package layer and run
as a non-root user."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.containers.standins import CONTEXT, STANDINS, Standin
from tests.support.compose import COMPOSE_FILE, load

# The compose services whose third-party image no registry here serves, and the variables that replace it.
STANDIN_SERVICES = {
    "redis": "REDIS_IMAGE",
    "postgres": "POSTGRES_IMAGE",
    "prometheus": "PROMETHEUS_IMAGE",
    "alertmanager": "ALERTMANAGER_IMAGE",
}


def _instructions(dockerfile: Path) -> list[tuple[str, list[str]]]:
    """(keyword, arguments) of each instruction, continuation lines joined and comments left out."""
    lines = [line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")]
    found = []
    for line in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.split()))
    return found


def test_the_table_covers_exactly_the_services_whose_image_is_a_standin_variable() -> None:
    services = load(COMPOSE_FILE)["services"]
    assert {s.service: s.variable for s in STANDINS} == STANDIN_SERVICES
    for standin in STANDINS:
        image = services[standin.service]["image"]
        assert image == f"${{{standin.variable}:-{standin.official}}}", f"{standin.service}: image is {image}"
    for name, service in services.items():
        for variable in STANDIN_SERVICES.values():
            if f"${{{variable}" in str(service.get("image", "")):
                assert STANDIN_SERVICES.get(name) == variable, f"{name} uses {variable}"


def test_tags_are_distinct_and_never_the_official_images() -> None:
    tags = [s.tag for s in STANDINS] + [s.packages.tag for s in STANDINS]
    assert len(set(tags)) == len(tags)
    assert not {s.official for s in STANDINS} & set(tags)


@pytest.mark.parametrize("standin", STANDINS, ids=lambda s: s.service)
def test_dockerfile_builds_offline_on_its_package_layer(standin: Standin) -> None:
    dockerfile = standin.dockerfile
    assert dockerfile.is_file(), f"{dockerfile} is missing"
    text = dockerfile.read_text()
    # A `# syntax=` line makes BuildKit fetch a frontend image from a registry; apt-get and pip need the network.
    assert not re.search(r"(?im)^\s*#\s*syntax\s*=", text)
    instructions = _instructions(dockerfile)
    commands = " ".join(" ".join(args) for keyword, args in instructions if keyword == "RUN")
    assert not re.search(r"\b(apt-get|apt|pip3?|curl)\b|wget\s", commands), "a stand-in's build uses no network"
    assert instructions[0] == ("ARG", [f"BASE_IMAGE={standin.packages.tag}"])
    assert ("FROM", ["${BASE_IMAGE}"]) in instructions
    users = [args[0] for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{dockerfile.name} must run as a non-root user"
    for keyword, args in instructions:
        if keyword in ("COPY", "ADD"):
            for source in [a for a in args if not a.startswith("--")][:-1]:
                assert (CONTEXT / source).is_file(), f"{dockerfile.name} copies {source}, not in {CONTEXT}"
