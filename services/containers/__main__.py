"""`python -m services.containers`: the wheelhouse, the image plan for `make up`, and a private Docker engine.

wheelhouse       download both images' pinned wheels into docker/wheelhouse/ (`make wheelhouse`)
prepare          decide every image (pull, or build stand-ins when no registry answers) and write the compose
                 settings of that decision to .cache/citadel/compose.env (`make up` reads it after .env)
engine start|stop   a private dockerd under the cache folder (what the test run does in CI)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from services.containers import engine, images, wheelhouse
from services.containers.progress import say

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_COMPOSE_FILE = "compose.yaml:compose.demo.yaml"


def read_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and name.strip() and not name.lstrip().startswith("#"):
                values[name.strip()] = value.strip().strip("'\"")
    return values


def prepare(env_file: Path, out: Path) -> int:
    """Plan the images for the engine `docker` reaches, build what must be built, write the compose settings."""
    docker_env = dict(os.environ)
    if not engine.answers(docker_env):
        say("no Docker engine answers `docker info`: start Docker first")
        return 1
    configured = {**read_env(env_file), **{k: v for k, v in os.environ.items() if k.endswith("_IMAGE")}}
    plan = images.plan(docker_env, cache=engine.cache_root(), configured=configured)
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    values = dict(plan.values)
    override = out.with_name("compose.unavailable.yaml")
    if plan.left_out:
        override.write_text(plan.override_yaml())
        files = os.environ.get("COMPOSE_FILE") or configured.get("COMPOSE_FILE") or DEFAULT_COMPOSE_FILE
        # Compose reads COMPOSE_FILE's paths relative to the project folder (this repository).
        where = override.relative_to(ROOT) if override.is_relative_to(ROOT) else override
        values["COMPOSE_FILE"] = f"{files}:{where}"
    else:
        override.unlink(missing_ok=True)
    header = "# Made by `python -m services.containers prepare` (make up): the images this machine can run.\n"
    out.write_text(header + "".join(f"{name}={value}\n" for name, value in values.items()))
    for name, value in values.items():
        say(f"{name}={value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.containers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("wheelhouse", help="download the images' wheels into docker/wheelhouse/")
    prep = commands.add_parser("prepare", help="pick or build every image; write the compose settings")
    prep.add_argument("--env-file", type=Path, default=ROOT / ".env")
    prep.add_argument("--out", type=Path, default=ROOT / ".cache" / "citadel" / "compose.env")
    eng = commands.add_parser("engine", help="a private Docker engine under the cache folder")
    eng.add_argument("action", choices=["start", "stop"])
    args = parser.parse_args(argv)
    try:
        if args.command == "wheelhouse":
            wheelhouse.make()
            return 0
        if args.command == "prepare":
            return prepare(args.env_file, args.out)
        folder = engine.cache_root() / "docker-engine"
        if args.action == "start":
            started = engine.start_private(folder)
            print(f"export DOCKER_HOST={started.env['DOCKER_HOST']}")
        else:
            engine.stop(engine.Engine(env={}, owned=True, folder=folder))
        return 0
    except (RuntimeError, OSError) as exc:
        say(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
