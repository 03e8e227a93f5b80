"""The environment a validation runs on: this host's CPUs and memory, versions, and whether the URL is this host."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import platform
import socket
from pathlib import Path

from yarl import URL

from .. import __version__
from .report import Environment


def host_environment(url: str) -> Environment:
    """This host (the one the validation runs on), and whether the URL points at it."""
    memory, available = _meminfo()
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    return Environment(
        validator_host=socket.gethostname(),
        os=platform.platform(),
        python=platform.python_version(),
        cpu_count=os.cpu_count(),
        cpus_usable=usable,
        cpu_model=_cpu_model(),
        memory_gib=memory,
        memory_available_gib=available,
        citadel_package_version=__version__,
        gateway_url=str(URL(url).with_user(None)),
        gateway_version=None,
        gateway_version_source="not asked",
        gateway_same_host=same_host(url),
    )


def same_host(url: str) -> bool | None:
    host = URL(url).host
    if not host:
        return None
    if host in ("localhost", socket.gethostname(), socket.getfqdn()):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            address = ipaddress.ip_address(socket.gethostbyname(host))
        except OSError:
            return None
    if address.is_loopback:
        return True
    try:
        own = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return None
    return str(address) in own


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _meminfo() -> tuple[float | None, float | None]:
    values: dict[str, float] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, rest = line.split(":", 1)
            if name in ("MemTotal", "MemAvailable"):
                values[name] = int(rest.split()[0]) / 1024 / 1024  # kB -> GiB
    if "MemTotal" not in values:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            values["MemTotal"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    total, available = values.get("MemTotal"), values.get("MemAvailable")
    return (round(total, 1) if total else None), (round(available, 1) if available else None)
