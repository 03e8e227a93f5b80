"""CPU and memory of this host (affinity, cgroup limits) against what config/models.yaml asks of its model servers."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from .common import GB
from .config import VLLM_BASE_MEMORY_GB, LocalServer
from .findings import Finding, fail, ok, warn

RESOURCE_FIX = (
    "use the `local` profile (CITADEL_PROFILE=local), lower cpus/memory_gb/kv_cache_gb in the models file, or move "
    "models to other hosts (their *_BACKENDS)"
)


@dataclass(frozen=True, slots=True)
class HostResources:
    cpus: float
    cpu_source: str
    memory_total_gb: float
    memory_available_gb: float
    memory_source: str


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_dirs(controller: str, proc: Path, root: Path) -> list[Path]:
    """Folders that may hold this process's cgroup files for `controller` (v2 and v1 layouts)."""
    dirs: list[Path] = []
    for line in (_read(proc / "self" / "cgroup") or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        relative = path.lstrip("/")
        if hierarchy == "0" and controllers == "":
            dirs += [root / relative, root]
        elif controller in controllers.split(","):
            for mount in (controllers, controller):
                dirs += [root / mount / relative, root / mount]
    return list(dict.fromkeys(dirs))


def _cgroup_cpus(proc: Path, root: Path) -> float | None:
    for folder in _cgroup_dirs("cpu", proc, root):
        quota_period = _read(folder / "cpu.max")
        if quota_period:
            quota, _, period = quota_period.partition(" ")
            if quota != "max" and period:
                return int(quota) / int(period)
            return None
        quota_text, period_text = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota_text is not None and period_text:
            return int(quota_text) / int(period_text) if int(quota_text) > 0 else None
    return None


def _cgroup_memory(proc: Path, root: Path) -> tuple[float, float] | None:
    """(limit, usage) in bytes when a memory limit is set."""
    for folder in _cgroup_dirs("memory", proc, root):
        for limit_file, usage_file in (
            ("memory.max", "memory.current"),
            ("memory.limit_in_bytes", "memory.usage_in_bytes"),
        ):
            limit = _read(folder / limit_file)
            if limit is None:
                continue
            if limit == "max" or int(limit) >= 2**60:
                return None
            return float(limit), float(_read(folder / usage_file) or 0)
    return None


def read_resources(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> HostResources:
    """Usable CPUs (affinity, cgroup quota) and memory (MemTotal/MemAvailable, cgroup limit)."""
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    cpu_source = f"{cpus:g} CPUs usable (of {os.cpu_count()})"
    quota = _cgroup_cpus(proc, cgroup_root)
    if quota is not None and quota < cpus:
        cpus, cpu_source = quota, f"{quota:g} CPUs (cgroup quota; {os.cpu_count()} on the host)"
    meminfo = {}
    for line in (_read(proc / "meminfo") or "").splitlines():
        name, _, value = line.partition(":")
        with contextlib.suppress(ValueError, IndexError):
            meminfo[name] = float(value.split()[0]) * 1024
    total = meminfo.get("MemTotal", 0.0)
    available = meminfo.get("MemAvailable", meminfo.get("MemFree", 0.0))
    source = f"{total / GB:.1f} GB total, {available / GB:.1f} GB available"
    limited = _cgroup_memory(proc, cgroup_root)
    if limited is not None and limited[0] < total:
        total, available = limited[0], min(available, max(limited[0] - limited[1], 0.0))
        source = f"cgroup limit {total / GB:.1f} GB, {available / GB:.1f} GB of it available"
    return HostResources(cpus, cpu_source, total / GB, available / GB, source)


def resource_findings(servers: list[LocalServer], host: HostResources, *, running: bool) -> list[Finding]:
    """CPUs and memory the local model servers ask (config) against what this host has."""
    if not servers:
        note = "no model server runs on this host (every backend is remote)"
        return [ok("cpu", f"{note}; {host.cpu_source}"), ok("memory", f"{note}; {host.memory_source}")]
    cpu_need = sum(server.cpus for server in servers)
    biggest = max(servers, key=lambda server: server.cpus)
    asks = ", ".join(f"{server.name} {server.cpus:g}" for server in servers)
    cpu_detail = f"model servers ask {cpu_need:g} CPUs ({asks}); {host.cpu_source}"
    if biggest.cpus > host.cpus:
        cpu = fail(
            "cpu",
            f"{cpu_detail}: {biggest.name} alone asks more than there are (Docker refuses such a CPU limit)",
            RESOURCE_FIX,
        )
    elif cpu_need > host.cpus:
        cpu = warn("cpu", f"{cpu_detail}: they share cores and answer slower than their latency targets", RESOURCE_FIX)
    else:
        cpu = ok("cpu", cpu_detail)
    memory_need = sum(server.memory_gb for server in servers)
    asks = ", ".join(f"{server.name} {server.memory_gb:.1f}" for server in servers)
    estimated = (
        f", a profile's server counted as {VLLM_BASE_MEMORY_GB:g} GB + its kv_cache_gb"
        if any(server.memory_estimated for server in servers)
        else ""
    )
    memory_detail = f"model servers ask {memory_need:.1f} GB ({asks}{estimated}); {host.memory_source}"
    if memory_need > host.memory_total_gb:
        memory = fail("memory", f"{memory_detail}: more than there is (the kernel would kill one)", RESOURCE_FIX)
    elif not running and memory_need > host.memory_available_gb:
        memory = warn(
            "memory",
            f"{memory_detail}: more than is available now (other processes use the rest)",
            f"stop what else uses memory here, or: {RESOURCE_FIX}",
        )
    else:
        memory = ok("memory", memory_detail)
    findings = [cpu, memory]
    for server in servers:
        if not server.memory_estimated and server.kv_cache_gb > server.memory_gb:
            findings.append(
                warn(
                    f"memory ({server.name})",
                    f"kv_cache_gb {server.kv_cache_gb:g} is more than memory_gb {server.memory_gb:g}: the server "
                    "cannot hold its KV cache within its memory limit",
                    "lower kv_cache_gb or raise memory_gb in the models file",
                )
            )
    return findings
