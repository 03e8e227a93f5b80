"""The overhead benchmark's processes: PostgreSQL (migrated, a key with limits), Redis, fake upstream, gateway."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import pin, set_affinity
from gateway.store.migrate import migrate
from services.postgres import LocalPostgres
from services.redis import LocalRedis
from tests.support.catalogs import chat_entry, write_models_file
from tests.support.ports import free_port
from tests.support.processes import stop, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
MODEL = "bench"
ADMIN_KEY = "bench-admin-key-0123456789"
# Limits on the key that no benchmark reaches: every request pays the real check (one Redis call), none is refused.
UNREACHABLE = 2**31 - 1  # per minute: the column is a PostgreSQL integer


# uvicorn re-raises SIGTERM once it has shut down, after putting back the handler it found: this one, which
# saves the profile (`python -m cProfile` would die by the signal without writing it). SIGUSR1 starts it.
PROFILED = """
import cProfile, signal, sys
from gateway.cli import main
profiler = cProfile.Profile()
def done(*_):
    profiler.disable()
    profiler.dump_stats({out!r})
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())  # after start-up: the requests only
main(sys.argv[1:])
done()
"""


@dataclass(slots=True)
class Backends:
    """Everything but the gateway; `key` is the bearer token the benchmark sends."""

    tmp: Path
    load_cpu: int
    upstream_port: int
    upstream: subprocess.Popen[bytes]
    key: str = ADMIN_KEY
    postgres: LocalPostgres | None = None
    redis: LocalRedis | None = None
    gateway_env: dict[str, str] = field(default_factory=dict)

    def pids(self) -> list[int]:
        """The processes that are not the gateway (moved between cores by the workers case)."""
        pids = [self.upstream.pid]
        if self.redis is not None and self.redis.pid is not None:
            pids.append(self.redis.pid)
        if self.postgres is not None and (pid := self.postgres.pid()) is not None:
            pids.append(pid)
        return pids

    def audit_rows(self) -> int | None:
        """Rows in llm.audit_log (None without PostgreSQL): proof that audit went through the real writer."""
        if self.postgres is None:
            return None
        out = self.postgres.psql("SELECT count(*) FROM llm.audit_log;", database=self.postgres.database)
        return int(out.strip())


@dataclass(slots=True)
class Gateway:
    port: int
    process: subprocess.Popen[bytes]
    workers: int
    cpus: str | None


def start_process(
    stack: ExitStack, name: str, command: list[str], *, env: dict[str, str], cwd: Path, port: int, log: Path
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # own session: a Ctrl-C reaches us, and we stop them
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=out, start_new_session=True)
    stack.callback(stop, process)  # before waiting, so that an interrupted start is cleaned up too
    wait_healthy(f"http://127.0.0.1:{port}/health", process=process, timeout_s=60, log=log)
    return process


def start_postgres(stack: ExitStack, tmp: Path, progress: Callable[[str], None]) -> LocalPostgres:
    pg = LocalPostgres(tmp / "pgdata", free_port(), password=secrets.token_urlsafe(16), log_path=tmp / "postgres.log")
    progress(f"starting PostgreSQL on :{pg.port} (initdb in a temporary folder) and migrating it")
    pg.start(timeout_s=60)
    stack.callback(pg.stop)
    pg.ensure_database()
    asyncio.run(migrate(pg.url, echo=lambda line: None))
    return pg


def create_key(pg: LocalPostgres, tmp: Path) -> str:
    """A user key with per-key limits, made as an operator would (`citadel keys create`)."""
    limits = ["--rpm", str(UNREACHABLE), "--tpm", str(UNREACHABLE)]
    command = [sys.executable, "-m", "gateway", "keys", "create", "--name", "bench", "--role", "user", *limits]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITADEL_")} | {"DATABASE_URL": pg.url}
    done = subprocess.run(command, env=env, cwd=tmp, capture_output=True, text=True, check=False)
    found = re.search(r"^key:\s+(\S+)", done.stdout, re.M)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"`citadel keys create` failed: {done.stderr[-2000:]}")
    return found.group(1)


def start_backends(
    stack: ExitStack, tmp: Path, *, load_cpu: int, pinned: bool, postgres: bool, redis: bool,
    progress: Callable[[str], None],
) -> Backends:  # fmt: skip
    models = write_models_file(tmp / "models.yaml", {MODEL: chat_entry(f"http://127.0.0.1:{(port := free_port())}")})
    base = {k: v for k, v in os.environ.items() if not k.startswith("CITADEL_")}
    base.pop("DATABASE_URL", None)
    base.pop("REDIS_URL", None)
    progress(f"starting the fake upstream on :{port}" + (f" (CPU {load_cpu})" if pinned else ""))
    command = [*pin(str(load_cpu) if pinned else None), sys.executable, "-m", "services.fake_upstream"]
    upstream = start_process(
        stack, "upstream", [*command, "--port", str(port)], env=base | {"PYTHONPATH": str(ROOT)}, cwd=ROOT,
        port=port, log=tmp / "upstream.log",
    )  # fmt: skip
    backends = Backends(tmp, load_cpu, port, upstream)
    env = base | {"CITADEL_ADMIN_KEY": ADMIN_KEY, "CITADEL_CONFIG_PATH": str(models), "CITADEL_PROFILE": ""}
    env["CITADEL_AUDIT_SPOOL_DIR"] = str(tmp / "audit-spool")  # used only while PostgreSQL is away (or absent)
    # The admission queue runs (its gate on every request), sized for the fake upstream, which answers any number
    # at once: a CPU model server's 4 would measure the queue's waiting, not the gateway's overhead.
    env["CITADEL_ADMISSION_CONCURRENCY"] = "1024"
    if postgres:
        backends.postgres = start_postgres(stack, tmp, progress)
        env["DATABASE_URL"] = backends.postgres.url
        backends.key = create_key(backends.postgres, tmp)
    if redis:
        backends.redis = LocalRedis(free_port(), data_dir=tmp)
        progress(f"starting Redis on :{backends.redis.port}")
        backends.redis.start()
        stack.callback(backends.redis.stop)
        env["REDIS_URL"] = backends.redis.url
        # Without PostgreSQL the admin key is the only one: give its role limits, so the limiter still runs.
        env["CITADEL_RATE_LIMIT_ROLE_REQUESTS"] = f'{{"admin": "{UNREACHABLE}/minute"}}'
        env["CITADEL_RATE_LIMIT_ROLE_TOKENS"] = f'{{"admin": "{UNREACHABLE}/minute"}}'
    if pinned:  # off the gateway's core; PostgreSQL's backends, forked later, inherit it
        for pid in backends.pids():
            set_affinity(pid, {load_cpu})
    backends.gateway_env = env
    return backends


def start_gateway(
    stack: ExitStack, backends: Backends, *, workers: int, cpus: str | None, name: str, profile: Path | None = None
) -> Gateway:
    """A gateway with `workers` workers on `cpus`; its cwd is the temp dir, so that no .env is read.
    With `profile`, one worker runs under cProfile and writes its stats there when stopped (SIGTERM)."""
    port = free_port()
    serve = ["-m", "gateway", "serve", "--workers", str(workers), "--port", str(port)]
    if profile is not None:  # `-c`: the script's argv are the gateway's (sys.argv[1:])
        serve = ["-c", PROFILED.format(out=str(profile)), *serve[2:]]
    command = [*pin(cpus), sys.executable, *serve]
    log = backends.tmp / f"{name}.log"
    process = start_process(stack, name, command, env=backends.gateway_env, cwd=backends.tmp, port=port, log=log)
    return Gateway(port, process, workers, cpus)
