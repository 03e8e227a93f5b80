"""The wheelhouse: every pinned wheel the two images install, downloaded on the host (`make wheelhouse`).

`pip download` runs with the host's own pip settings (index mirrors, CA bundle, local find-links, constraints),
plus TORCH_INDEX_URL when set, into docker/wheelhouse/gateway and docker/wheelhouse/vllm, inside the build
context. The Dockerfiles install from there with `--no-index` when wheels are present, so an image build needs
no network and no registry (an air-gapped host needs only the wheelhouse and a base image). A source
distribution among the downloads is built into a wheel here, so nothing is compiled in the build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from services.containers.progress import say, step

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = ROOT / "docker" / "wheelhouse"


class WheelhouseError(RuntimeError):
    """pip could not download a requirement: the message carries pip's output."""


def gateway_requirements() -> list[str]:
    """The gateway image's requirements: [project].dependencies of pyproject.toml, as its Dockerfile reads them."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        return list(tomllib.load(file)["project"]["dependencies"])


def vllm_requirements() -> list[str]:
    lines = (ROOT / "services" / "vllm" / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _pip(args: list[str], what: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise WheelhouseError(f"{what} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


def download(requirements: list[str], target: Path, *, extra_index: str | None = None) -> int:
    """Download `requirements` and their dependencies as wheels into `target`; the number of files there."""
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listing:
        listing.write("\n".join(requirements) + "\n")
    try:
        args = ["download", "--quiet", "--dest", str(target), "-r", listing.name]
        if extra_index:
            args += ["--extra-index-url", extra_index]
        _pip(args, f"pip download into {target}")
    finally:
        os.unlink(listing.name)
    for sdist in [p for p in target.iterdir() if p.name.endswith((".tar.gz", ".zip"))]:
        _pip(
            ["wheel", "--quiet", "--no-deps", "--wheel-dir", str(target), str(sdist)],
            f"building a wheel of {sdist.name}",
        )
        sdist.unlink()
    return sum(1 for p in target.iterdir() if p.suffix == ".whl")


def _linked_into(source: Path, target: Path) -> None:
    """Make `target` hold exactly the wheels of `source` (hard links where one file system has both)."""
    target.mkdir(parents=True, exist_ok=True)
    wanted = {p.name for p in source.iterdir() if p.suffix == ".whl"}
    for stale in [p for p in target.iterdir() if p.suffix == ".whl" and p.name not in wanted]:
        stale.unlink()
    for name in sorted(wanted - {p.name for p in target.iterdir()}):
        try:
            os.link(source / name, target / name)
        except OSError:
            shutil.copyfile(source / name, target / name)


def make(*, gateway: bool = True, vllm: bool = True, cache: Path | None = None) -> None:
    """`make wheelhouse`: both images' wheels (the vLLM one is about 1 GB: torch's CPU build is most of it).

    With `cache` (the test run passes the per-user cache folder), the wheels are downloaded there once per set of
    requirements (a stamp file records it) and linked into the build context: a fresh clone needs no download.
    """
    if sys.version_info[:2] != (3, 11):
        raise WheelhouseError(f"the images run Python 3.11; run this with python3.11, not {sys.version.split()[0]}")
    torch_index = os.environ.get("TORCH_INDEX_URL") or None
    sets = {"gateway": (gateway_requirements(), None), "vllm": (vllm_requirements(), torch_index)}
    for name, (requirements, extra_index) in sets.items():
        if not {"gateway": gateway, "vllm": vllm}[name]:
            continue
        folder = cache / "wheelhouse" / name if cache else WHEELHOUSE / name
        stamp = folder / ".requirements"
        recipe = "\n".join([*requirements, f"extra-index={extra_index}"]) + "\n"
        if stamp.is_file() and stamp.read_text() == recipe:
            say(f"wheelhouse: {name} wheels up to date in {folder}")
        else:
            size = " (about 1 GB)" if name == "vllm" else ""
            with step(f"wheelhouse: {name} wheels into {folder}{size}"):
                download(requirements, folder, extra_index=extra_index)
            stamp.write_text(recipe)
        if cache:
            _linked_into(folder, WHEELHOUSE / name)
