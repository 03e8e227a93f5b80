"""The images checked without a Docker engine: the Dockerfiles copy only files that exist and are in the build
context, run as a non-root user, the gateway image holds only the gateway and installs every library it imports,
and .dockerignore keeps secrets, weights and environments out."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

from tests.support.compose import ROOT


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        bare = pattern.lstrip("!").strip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(prefix, bare) for prefix in prefixes):
            ignored = not negate
    return ignored


def _instructions(dockerfile: Path) -> list[tuple[str, list[str]]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.split()))
    return found


DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_copy_only_files_that_exist_and_are_in_the_build_context(dockerfile: Path) -> None:
    patterns = _dockerignore()
    copied = []
    for keyword, args in _instructions(dockerfile):
        if keyword not in ("COPY", "ADD") or any(a.startswith("--from") for a in args):
            continue
        sources = [a for a in args if not a.startswith("--")][:-1]
        for source in sources:
            copied.append(source)
            assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
            assert not _ignored(source.rstrip("/"), patterns), f"{source} is excluded by .dockerignore"
    assert copied
    instructions = _instructions(dockerfile)
    assert sum(k == "FROM" for k, _ in instructions) >= 2, "multi-stage: build tools stay out of the image"
    if dockerfile.name == "systemd-host.Dockerfile":
        # A stand-in for a whole host (the systemd tests): systemd is PID 1 and root; the units it starts run
        # as the `citadel` user (User= in deploy/systemd), which test_systemd.py checks.
        return
    users = [args[0] for k, args in instructions if k == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{dockerfile.name} must run as a non-root user"


def test_the_gateway_image_holds_only_what_the_gateway_needs() -> None:
    instructions = _instructions(ROOT / "docker" / "gateway.Dockerfile")
    text = (ROOT / "docker" / "gateway.Dockerfile").read_text()
    assert "vllm" not in text.lower().replace("no vllm", "")
    final_stage = len(instructions) - [k for k, _ in instructions][::-1].index("FROM")
    copied = {
        source.rstrip("/")
        for keyword, args in instructions[final_stage:]
        if keyword == "COPY" and not any(a.startswith("--from") for a in args)
        for source in [a for a in args if not a.startswith("--")][:-1]
    }
    assert copied == {"pyproject.toml", "alembic.ini", "gateway", "migrations", "config"}


@pytest.mark.parametrize("dockerfile", ["gateway.Dockerfile", "vllm-cpu.Dockerfile"])
def test_images_build_offline_from_a_wheelhouse_when_one_is_given(dockerfile: str) -> None:
    text = (ROOT / "docker" / dockerfile).read_text()
    assert not re.search(r"(?m)^#\s*syntax=", text), "BuildKit cannot fetch a frontend image offline"
    assert re.search(r"(?m)^ARG PYTHON_IMAGE=", text), "the base image must be a build argument"
    wheelhouse = "gateway" if dockerfile.startswith("gateway") else "vllm"
    assert f"COPY docker/wheelhouse/{wheelhouse}/ " in text
    assert "--no-index --find-links /tmp/wheels" in text
    assert (ROOT / "docker" / "wheelhouse" / wheelhouse / ".keep").is_file(), "the folder must exist in a clone"


def test_dockerignore_keeps_secrets_weights_and_environments_out_of_images() -> None:
    patterns = _dockerignore()
    for path in (".env", ".venv/bin/python", ".venv-vllm/lib", "models/mixtral/model.safetensors", ".git/config"):
        assert _ignored(path, patterns), f"{path} would be sent to the Docker build"
    assert not _ignored(".env.example", patterns)


def _runtime_closure() -> set[str]:
    """pyproject's [project].dependencies and everything they require (with the extras asked for)."""
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(spec) for spec in project["dependencies"]]
    seen: set[str] = set()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue
        extras = requirement.extras or {""}
        for spec in map(Requirement, requires):
            if spec.marker is None or any(spec.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append(spec)
    return seen


def test_the_gateway_image_installs_every_library_the_gateway_imports() -> None:
    """The image installs only pyproject's runtime dependencies: a library the gateway imports that is only
    in the dev environment would work in the tests and fail in the container."""
    import ast
    import sys
    from importlib import metadata

    from packaging.utils import canonicalize_name

    modules: set[str] = set()
    for path in (ROOT / "gateway").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = {m for m in modules if m not in sys.stdlib_module_names and m != "gateway"}
    providers = metadata.packages_distributions()
    installed = _runtime_closure()
    missing = {
        module: providers.get(module, ["?"])
        for module in sorted(third_party)
        if not {canonicalize_name(d) for d in providers.get(module, [])} & installed
    }
    assert not missing, f"imported by gateway/ but not a runtime dependency in pyproject.toml: {missing}"
