"""Ports of this host: free, held by the gateway or a model server, or taken by another process (which, from /proc)."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..settings import Settings
from .config import LocalServer
from .findings import Finding, fail, ok
from .services import ReplicaProbe

_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


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
