"""The gateway's dependencies, reached from this host: PostgreSQL (version, clock, migrations), Redis, Qdrant,
and every model replica (/health, /v1/models, /version)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError
from sqlalchemy import pool, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from ..catalog import Catalog
from ..settings import Settings
from ..store.db import normalize_url
from ..store.migrate import alembic_config, current_revision, describe_connect_error
from .common import MIGRATE_FIX, POSTGRES_DOWN_FIX, REDIS_DOWN_FIX, http_reason, start_fix
from .findings import Finding, elapsed_ms, fail, ok, warn

CLOCK_SKEW_WARN_S = 2.0


def _where_postgres(url: str) -> str:
    parsed = make_url(url)
    return (
        f"PostgreSQL at {parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database} (user {parsed.username})"
    )


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, kind):
            return True
        current = current.__cause__ or current.__context__
    return False


async def check_postgres(settings: Settings, *, timeout_s: float) -> list[Finding]:
    """Reachable (connect time, a round trip), its version, its clock against ours, the schema at head."""
    if settings.database_url is None:
        return [
            warn(
                "postgres",
                "DATABASE_URL is not set: only the bootstrap admin key works, audit rows stay in the local spool, "
                "and keys, sessions, usage and the admin API answer 503",
                "set DATABASE_URL=postgresql://user:password@host:5432/citadel_ai (in .env), then `citadel migrate`; "
                "`make run` starts and migrates an embedded PostgreSQL by itself",
            )
        ]
    try:
        url = normalize_url(settings.database_url.get_secret_value())
    except ValueError as exc:
        return [fail("postgres", str(exc), "correct DATABASE_URL: postgresql://user:password@host:5432/citadel_ai")]
    where = _where_postgres(url)
    engine = create_async_engine(
        url,
        poolclass=pool.NullPool,
        connect_args={
            "timeout": timeout_s,
            "command_timeout": timeout_s,
            "server_settings": {"application_name": "citadel-doctor"},
        },
    )
    started = time.perf_counter()
    try:
        async with engine.connect() as connection:
            version = (await connection.execute(text("SHOW server_version"))).scalar_one()
            connect_ms = elapsed_ms(started)
            sent = time.time()
            round_trip = time.perf_counter()
            server_now = (await connection.execute(text("SELECT clock_timestamp()"))).scalar_one()
            latency = elapsed_ms(round_trip)
            received = time.time()
            revision = await connection.run_sync(current_revision)
    except Exception as exc:
        return [_postgres_failure(exc, where, timeout_s, elapsed_ms(started))]
    finally:
        await engine.dispose()
    reachable = ok(
        "postgres",
        f"{where}: PostgreSQL {str(version).split()[0]}, connected in {connect_ms:g} ms, round trip {latency:g} ms",
        latency_ms=latency,
    )
    skew = server_now.timestamp() - (sent + received) / 2
    return [reachable, _clock_finding(skew, received - sent), _migrations_finding(url, revision)]


def _postgres_failure(exc: BaseException, where: str, timeout_s: float, latency: float) -> Finding:
    if _caused_by(exc, asyncpg.InvalidCatalogNameError):
        return fail("postgres", f"{where}: the database does not exist", f"{MIGRATE_FIX}: it creates it")
    if _caused_by(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return fail(
            "postgres",
            f"{where}: {describe_connect_error(exc)}",
            "check the user and password in DATABASE_URL (and pg_hba.conf on the server)",
        )
    if _caused_by(exc, TimeoutError):
        reason = f"no answer within {timeout_s:g} s"
    else:
        reason = describe_connect_error(exc) or f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return fail("postgres", f"{where}: {reason}", POSTGRES_DOWN_FIX, latency_ms=latency)


def _clock_finding(skew_s: float, round_trip_s: float) -> Finding:
    side = "ahead of" if skew_s > 0 else "behind"
    detail = f"PostgreSQL's clock is {abs(skew_s):.2f} s {side} this host's (± {round_trip_s / 2:.3f} s)"
    if abs(skew_s) > CLOCK_SKEW_WARN_S:
        return warn(
            "postgres clock",
            detail,
            "synchronise both hosts' clocks with NTP (`timedatectl set-ntp true`, `chronyc tracking`): key expiry, "
            "audit times and usage days mix the two clocks",
        )
    return ok("postgres clock", detail)


def _migrations_finding(url: str, revision: str | None) -> Finding:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    script = ScriptDirectory.from_config(alembic_config(url))
    heads = script.get_heads()
    head = ", ".join(heads)
    if revision in heads:
        return ok("migrations", f"schema at head ({revision})")
    if revision is None:
        return fail("migrations", f"no schema yet (head is {head})", MIGRATE_FIX)
    try:
        script.get_revision(revision)
    except CommandError:
        return fail(
            "migrations",
            f"the database is at revision {revision}, which this gateway does not know (a newer one migrated it)",
            "run the gateway version that migrated it, or downgrade the schema with that version's `citadel downgrade`",
        )
    return fail("migrations", f"schema at {revision}, head is {head}", MIGRATE_FIX)


async def check_redis(settings: Settings, *, timeout_s: float) -> list[Finding]:
    """Reachable (a PING round trip against CITADEL_REDIS_TIMEOUT_MS), and its version."""
    if not settings.redis_url:
        return [
            warn(
                "redis",
                "REDIS_URL is not set: no rate limits, no response cache, and a revoked key is refused by the other "
                "workers only after CITADEL_KEY_CACHE_TTL_S",
                "set REDIS_URL=redis://host:6379/0 (in .env); `make run` starts a local Redis, compose has one",
            )
        ]
    parsed = urlsplit(settings.redis_url)
    where = f"Redis at {parsed.hostname or 'localhost'}:{parsed.port or 6379}{parsed.path or ''}"
    client = Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    started = time.perf_counter()
    try:
        await client.ping()
        connect_ms = elapsed_ms(started)
        round_trip = time.perf_counter()
        await client.ping()
        latency = elapsed_ms(round_trip)
        info: dict[str, Any] = await client.info("server")
    except AuthenticationError as exc:
        return [fail("redis", f"{where}: login refused ({exc})", "check the password (and user) in REDIS_URL")]
    except (RedisError, OSError, TimeoutError) as exc:  # refused, timed out, or an answer that is not Redis'
        return [fail("redis", f"{where}: {_reason(exc, timeout_s)}", REDIS_DOWN_FIX, latency_ms=elapsed_ms(started))]
    finally:
        await client.aclose()
    detail = (
        f"{where}: Redis {info.get('redis_version', '?')}, connected in {connect_ms:g} ms, round trip {latency:g} ms"
    )
    if latency > settings.redis.timeout_ms:
        return [
            warn(
                "redis",
                f"{detail}: slower than CITADEL_REDIS_TIMEOUT_MS ({settings.redis.timeout_ms:g} ms), so the gateway "
                "counts its calls as failures",
                "run Redis next to the gateway (a sidecar answers in well under a millisecond), or raise "
                "CITADEL_REDIS_TIMEOUT_MS",
                latency_ms=latency,
            )
        ]
    return [ok("redis", detail, latency_ms=latency)]


def _reason(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
        return f"no answer within {timeout_s:g} s"
    text_ = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text_}" if text_ else type(exc).__name__


async def check_qdrant(settings: Settings, *, timeout_s: float, workdir: Path) -> list[Finding]:
    """The Qdrant server at QDRANT_URL (version, the API key accepted), else the embedded store's folder."""
    if not settings.qdrant_url:
        return embedded_qdrant(settings, workdir=workdir)
    url = settings.qdrant_url.rstrip("/")
    headers = {"api-key": settings.qdrant_api_key.get_secret_value()} if settings.qdrant_api_key else {}
    started = time.perf_counter()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async with session.get(f"{url}/collections", headers=headers) as answer:
                status = answer.status
            latency = elapsed_ms(started)
            async with session.get(f"{url}/", headers=headers) as root:
                about = await root.json(content_type=None) if root.status == 200 else {}
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        return [
            fail(
                "qdrant",
                f"Qdrant at {url}: {http_reason(exc, timeout_s)}",
                "start Qdrant (`docker compose up -d qdrant`) or correct QDRANT_URL; without QDRANT_URL the gateway "
                "keeps vectors in an embedded store (one worker only)",
            )
        ]
    if status in (401, 403):
        return [
            fail(
                "qdrant",
                f"Qdrant at {url} refused the API key (HTTP {status})",
                "set QDRANT_API_KEY to the key the Qdrant server expects",
                latency_ms=latency,
            )
        ]
    if status != 200:
        return [
            fail(
                "qdrant",
                f"{url} answered HTTP {status} to GET /collections",
                "QDRANT_URL must be a Qdrant server's HTTP address (port 6333)",
                latency_ms=latency,
            )
        ]
    version = about.get("version", "?") if isinstance(about, dict) else "?"
    return [ok("qdrant", f"Qdrant {version} at {url}, answered in {latency:g} ms", latency_ms=latency)]


def embedded_qdrant(settings: Settings, *, workdir: Path) -> list[Finding]:
    """Without QDRANT_URL: the embedded store's folder must be writable, and only one worker may open it."""
    path = settings.qdrant.path if settings.qdrant.path.is_absolute() else workdir / settings.qdrant.path
    findings = []
    if settings.workers > 1:
        findings.append(
            warn(
                "qdrant",
                f"no QDRANT_URL and {settings.workers} workers: the embedded store serves one process, so the vector "
                "routes answer 503",
                "set QDRANT_URL to a Qdrant server (compose has one), or run one worker (API_GATEWAY_WORKERS=1)",
            )
        )
    problem = writable_problem(path)
    if problem:
        findings.append(
            fail(
                "qdrant",
                f"no QDRANT_URL: the embedded store's folder {path} {problem}",
                "make it writable for the gateway's user, or set CITADEL_QDRANT_PATH (or QDRANT_URL)",
            )
        )
    elif not findings:
        findings.append(ok("qdrant", f"no QDRANT_URL: vectors in the embedded store at {path} (writable)"))
    return findings


def writable_problem(path: Path) -> str | None:
    """None when files can be made in `path` (or in the folder that would hold it); else what is wrong."""
    target = path
    while not target.exists():
        if target.parent == target:
            return "has no existing parent folder"
        target = target.parent
    if not target.is_dir():
        return f"cannot be made: {target} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as exc:
        return f"is not writable ({exc.strerror or type(exc).__name__} in {target})"
    return None


# Model replicas


@dataclass
class ReplicaProbe:
    """What one model server URL answered."""

    url: str
    healthy: bool = False
    error: str | None = None
    latency_ms: float | None = None
    served: list[str] | None = None  # /v1/models ids; None when it does not list them
    models_status: int | None = None
    version: str | None = None
    listening: bool = False  # something accepted the connection


async def probe_replica(session: aiohttp.ClientSession, url: str, *, timeout_s: float) -> ReplicaProbe:
    """GET /health (timed), then /v1/models and /version; never raises."""
    probe = ReplicaProbe(url=url)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s), session.get(f"{url}/health") as answer:
            probe.listening = True
            probe.latency_ms = elapsed_ms(started)
            if answer.status != 200:
                probe.error = f"/health answered HTTP {answer.status}"
                return probe
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        probe.listening = not isinstance(exc, aiohttp.ClientConnectorError)
        probe.error = http_reason(exc, timeout_s)
        return probe
    probe.healthy = True
    await asyncio.gather(_models(session, probe, timeout_s), _version(session, probe, timeout_s))
    return probe


async def _models(session: aiohttp.ClientSession, probe: ReplicaProbe, timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s), session.get(f"{probe.url}/v1/models") as answer:
            probe.models_status = answer.status
            if answer.status == 200:
                body = await answer.json(content_type=None)
                probe.served = [str(item.get("id")) for item in body.get("data", []) if isinstance(item, dict)]
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError, AttributeError):
        probe.models_status = probe.models_status or 0


async def _version(session: aiohttp.ClientSession, probe: ReplicaProbe, timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s), session.get(f"{probe.url}/version") as answer:
            if answer.status == 200:
                body = await answer.json(content_type=None)
                probe.version = str(body["version"]) if isinstance(body, dict) and "version" in body else None
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        pass


async def probe_replicas(urls: list[str], *, timeout_s: float) -> dict[str, ReplicaProbe]:
    """Every distinct replica URL, concurrently."""
    unique = list(dict.fromkeys(urls))
    async with aiohttp.ClientSession() as session:
        probes = await asyncio.gather(*(probe_replica(session, url, timeout_s=timeout_s) for url in unique))
    return dict(zip(unique, probes, strict=True))


def replica_findings(catalog: Catalog, probes: dict[str, ReplicaProbe]) -> list[Finding]:
    """One finding per model and replica: answers /health, and serves the model under the name the gateway asks."""
    server_of = {name: server.name for server in catalog.servers for name in server.serves}
    findings = []
    for name, spec in catalog.models.items():
        for index, url in enumerate(spec.backends):
            check = f"replica {name}[{index}]"
            probe = probes[url]
            if not probe.healthy:
                fix = start_fix(name, server_of.get(name))
                if probe.listening:
                    fix = (
                        f"something listens at {url} but does not answer /health: look at its log (make run: "
                        f".cache/citadel/logs/, `docker compose logs vllm-{name}`, `journalctl -u "
                        f"citadel-vllm@{name}`), or see the port finding for which process holds it"
                    )
                findings.append(fail(check, f"{url}: {probe.error}", fix, latency_ms=probe.latency_ms))
                continue
            detail = f"{url}: /health answered in {probe.latency_ms:g} ms"
            if probe.served is None:
                findings.append(
                    warn(
                        check,
                        f"{detail}, but GET /v1/models answered {probe.models_status or 'nothing'}: not a vLLM "
                        "OpenAI server?",
                        "the backend URL must be the vLLM server's base address (http://host:port, without /v1)",
                        latency_ms=probe.latency_ms,
                    )
                )
            elif spec.upstream_name not in probe.served:
                findings.append(
                    fail(
                        check,
                        f"{detail}, but it serves {', '.join(probe.served) or 'no model'}, not {spec.upstream_name!r}",
                        f"start that server with --served-model-name {spec.upstream_name}, or set `upstream_model` "
                        f"of {name} in the models file to the name it serves",
                        latency_ms=probe.latency_ms,
                    )
                )
            else:
                findings.append(ok(check, f"{detail}, serves {spec.upstream_name}", latency_ms=probe.latency_ms))
    return findings
