"""Runs every check of a host (concurrently where they wait on the network), each bounded in time, and puts the
findings in a fixed order: configuration, dependencies, replicas, ports, resources, disk, weights, spool, versions."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp

from ..catalog import Catalog
from ..settings import REPO_ROOT, Settings
from .config import LocalWeights, check_catalog, check_settings, environment, local_servers, local_weights, read_raw
from .disk import check_disk
from .findings import Finding, crashed, guarded, in_thread
from .ports import gateway_port_finding, model_port_findings, port_holders
from .resources import read_resources, resource_findings
from .services import ReplicaProbe, check_postgres, check_qdrant, check_redis, probe_replicas, replica_findings
from .spool import spool_finding
from .versions import versions_finding, vllm_version
from .weights import hf_cache_dir, is_hub_id, reaches_hub, weights_finding

T = TypeVar("T")


async def attempt(work: Awaitable[T], timeout_s: float) -> T | BaseException:
    """The result, or the exception (a timeout included) for the findings that need it to say what failed."""
    try:
        async with asyncio.timeout(timeout_s):
            return await work
    except Exception as exc:
        return exc


def safely(check: str, build: Callable[[], list[Finding]]) -> list[Finding]:
    try:
        return build()
    except Exception as exc:
        return [crashed(check, exc)]


def _need(value: T | BaseException) -> T:
    """A fact gathered earlier, or its exception raised again (inside `safely`, it becomes the finding)."""
    if isinstance(value, BaseException):
        raise value
    return value


def _resolve(path: Path, workdir: Path) -> Path:
    return path if path.is_absolute() else workdir / path


async def gateway_answers(settings: Settings, timeout_s: float) -> bool:
    """True when the process on the gateway's port answers /health as a Citadel gateway."""
    # A wildcard listen address is reached on loopback; the names are compared, nothing binds to them.
    host = settings.host if settings.host not in ("", "0.0.0.0", "::") else "127.0.0.1"  # nosec B104
    host = f"[{host}]" if ":" in host else host
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.get(f"http://{host}:{settings.port}/health") as answer,
        ):
            body = await answer.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return False
    return isinstance(body, dict) and body.get("service") == "gateway"


async def host_findings(*, timeout_s: float, workdir: Path, env_file: Path | None) -> list[Finding]:
    """Every check of this host, as `citadel serve` and the local stack would run here (from `workdir`)."""
    settings_finding, settings = check_settings(env_file)
    if settings is None:
        return [settings_finding]
    env = environment(env_file)
    catalog_finding, catalog = check_catalog(settings, env)
    findings = [settings_finding, catalog_finding]
    findings += await _checks(settings, catalog, env, timeout_s=timeout_s, workdir=workdir)
    return findings


async def _checks(
    settings: Settings, catalog: Catalog | None, env: dict[str, str], *, timeout_s: float, workdir: Path
) -> list[Finding]:
    raw = read_raw(settings.config_path) if catalog is not None else {}
    servers = local_servers(catalog, raw) if catalog is not None else []
    weights = local_weights(catalog, raw, servers) if catalog is not None else []
    urls = [url for spec in catalog.models.values() for url in spec.backends] if catalog is not None else []
    cache_dir = _resolve(Path(env.get("CITADEL_CACHE_DIR") or REPO_ROOT / ".cache" / "citadel"), workdir)
    vllm_python = Path(env.get("VLLM_PYTHON") or REPO_ROOT / ".venv-vllm" / "bin" / "python")
    hf_cache = hf_cache_dir(env)
    hub_ids, uncached = _hub_weights(weights, hf_cache)
    budget = 2 * timeout_s + 2  # a check makes a few calls of timeout_s at most
    ports = {settings.port, *(server.port for server in servers)}

    async def reachable() -> bool:
        return await in_thread(lambda: reaches_hub(env, timeout_s)) if uncached else False

    async with asyncio.TaskGroup() as group:  # attempt() and guarded() never raise: all run to the end
        postgres = group.create_task(
            guarded("postgres", check_postgres(settings, timeout_s=timeout_s), timeout_s=budget + timeout_s)
        )
        redis = group.create_task(guarded("redis", check_redis(settings, timeout_s=timeout_s), timeout_s=budget))
        qdrant = group.create_task(
            guarded("qdrant", check_qdrant(settings, timeout_s=timeout_s, workdir=workdir), timeout_s=budget)
        )
        probing = group.create_task(attempt(probe_replicas(urls, timeout_s=timeout_s), budget + timeout_s))
        holding = group.create_task(attempt(in_thread(lambda: port_holders(ports)), budget))
        gateway_up = group.create_task(attempt(gateway_answers(settings, timeout_s), budget))
        measuring = group.create_task(attempt(in_thread(read_resources), budget))
        local_vllm = group.create_task(attempt(in_thread(lambda: vllm_version(vllm_python, timeout_s=budget)), budget))
        online = group.create_task(attempt(reachable(), budget))
    probes = probing.result()
    probed: dict[str, ReplicaProbe] = probes if isinstance(probes, dict) else {}

    def check_weights(item: LocalWeights) -> list[Finding]:
        hub = online.result()
        return [
            weights_finding(
                item,
                cache_dir=cache_dir,
                vllm_python=vllm_python,
                hf_cache=hf_cache,
                online=hub if isinstance(hub, bool) else False,
            )
        ]

    places = {"the cache": cache_dir, "the audit spool": settings.audit.spool_dir}
    if not settings.qdrant_url:
        places["the embedded Qdrant store"] = settings.qdrant.path
    if hub_ids:
        places["the Hugging Face cache"] = hf_cache
    places = {label: _resolve(path, workdir) for label, path in places.items()}
    on_disk = await asyncio.gather(
        guarded("disk", in_thread(lambda: check_disk(places)), timeout_s=budget),
        *(
            guarded(f"weights {item.weights}", in_thread(functools.partial(check_weights, item)), timeout_s=budget)
            for item in weights
        ),
        guarded("audit spool", in_thread(lambda: [spool_finding(settings, workdir=workdir)]), timeout_s=budget),
    )
    disk, weight_findings, spool = on_disk[0], on_disk[1:-1], on_disk[-1]

    def replicas() -> list[Finding]:
        return replica_findings(catalog, _need(probes)) if catalog is not None else []

    def port_findings() -> list[Finding]:
        known = _need(holding.result())
        gateway = gateway_port_finding(settings, known, is_gateway=gateway_up.result() is True)
        return [gateway, *model_port_findings(servers, known, probed)]

    def resource_checks() -> list[Finding]:
        running = any(probed[server.url].healthy for server in servers if server.url in probed)
        return resource_findings(servers, _need(measuring.result()), running=running)

    def versions() -> list[Finding]:
        found = local_vllm.result()
        return [versions_finding(found if isinstance(found, str) else f"unknown ({type(found).__name__})", probed)]

    return [
        *postgres.result(),
        *redis.result(),
        *qdrant.result(),
        *safely("replicas", replicas),
        *safely("ports", port_findings),
        *safely("resources", resource_checks),
        *disk,
        *(finding for group in weight_findings for finding in group),
        *spool,
        *safely("versions", versions),
    ]


def _hub_weights(weights: list[LocalWeights], hf_cache: Path) -> tuple[list[LocalWeights], list[LocalWeights]]:
    """Weights given as a Hugging Face id, and those of them not in the cache yet."""
    hub_ids = [item for item in weights if is_hub_id(item.weights) and not Path(item.weights).exists()]
    uncached = [item for item in hub_ids if not (hf_cache / f"models--{item.weights.replace('/', '--')}").exists()]
    return hub_ids, uncached
