"""A local server process in a process group of its own: start, wait until ready, stop as a whole, log tail.

Every server (vLLM, PostgreSQL, Redis, the gateway, a test's fake upstream) is started in a new session, so it
and what it forks (vLLM's engine core and worker, uvicorn's workers) form one process group. Its processes are
that group plus all that descends from it (PostgreSQL's backends call setsid() and leave the group). They are
stopped together: the stop signal goes to the server's main process, which shuts its own children down in
order; SIGKILL goes to all of them after a grace period, or soon after the main process is gone and only
orphans are left. `Watchdog` does the same for a runner that is itself killed, SIGKILL included.

    server = LocalServer("redis", ["redis-server", "--port", "6379"], log_path=Path("redis.log"), ready_check=ping)
    server.start(); server.wait_ready(5)   # ServerError, with the log's last lines, if it dies or times out
    server.stop()                          # nothing of its processes is left afterwards
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Once a server's main process is gone, what remains of its group is orphaned (vLLM's engine core, say, which
# ignores SIGTERM without its API server): it gets this long to exit by itself, then SIGKILL.
ORPHAN_GRACE_S = 2.0
# SIGKILL is not refused; this only bounds the wait while the kernel frees a large process's memory.
KILL_WAIT_S = 10.0
ROOT = Path(__file__).resolve().parent.parent


class ServerError(RuntimeError):
    """A server exited, or was not ready in time; the message ends with the last lines of its log."""


def _always_ready() -> bool:
    return True


@dataclass(eq=False)
class LocalServer:
    """One server process and its process group; see the module docstring."""

    name: str
    command: list[str]
    log_path: Path
    ready_check: Callable[[], bool] = _always_ready
    env: dict[str, str] | None = None  # None: this process's own environment, passed on as it is
    cwd: Path | str = "/"
    stop_signal: int = signal.SIGTERM
    stop_grace_s: float = 20.0
    ready_timeout_s: float = 60.0
    poll_s: float = 0.1
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    started_at: float = field(default=0.0, init=False)
    starts: int = field(default=0, init=False)
    # Its processes seen so far (pid -> start time): an orphan of a crash is found through them.
    known: dict[int, int] = field(default_factory=dict, init=False, repr=False)

    @property
    def pid(self) -> int | None:
        """The main process's pid (also its process group's id) while it runs."""
        return self.process.pid if self.running and self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once the main process has exited (negative: the signal that ended it)."""
        return self.process.poll() if self.process is not None else None

    def start(self) -> None:
        """Start the server (nothing happens while it runs). The first start truncates the log; a restart
        appends to it, so what a crashed run wrote is still there."""
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab" if self.starts else "wb") as log:
            if self.starts:
                log.write(f"\n--- {self.name} started again at {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
                log.flush()
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group; Ctrl-C in a terminal reaches only the runner
            )
        self.starts += 1
        self.started_at = time.monotonic()
        self.known = {}

    def remember(self, table: ProcessTable | None = None) -> None:
        """Note its current processes: PostgreSQL's backends leave its process group, and once their parent
        is killed nothing else leads to them."""
        if self.running and self.process is not None:
            self.known = server_processes(self.process.pid, table, self.known)

    def wait_ready(self, timeout_s: float | None = None) -> float:
        """Block until `ready_check` passes; the seconds since the start. ServerError if it exits or times out."""
        timeout_s = self.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            self.fail_if_exited()
            if self.ready_check():
                return time.monotonic() - self.started_at
            if time.monotonic() > deadline:
                raise ServerError(self.describe(f"was not ready within {timeout_s:.0f}s"))
            time.sleep(self.poll_s)

    def stop(self, sig: int | None = None, *, grace_s: float | None = None) -> int | None:
        """Stop the whole process group (also what is left of it after a crash); the main process's exit status."""
        if self.process is None:
            return None
        group = (self.process.pid, self.stop_signal if sig is None else sig)
        grace_s = self.stop_grace_s if grace_s is None else grace_s
        stop_groups([group], grace_s=grace_s, leaders=[self.process], known={self.process.pid: self.known})
        return self.process.returncode

    def fail_if_exited(self) -> None:
        """ServerError, with the log's last lines, once the main process has exited."""
        code = self.returncode
        if code is not None:
            raise ServerError(self.describe(f"exited ({describe_exit(code)}) before it was ready"))

    def log_tail(self, lines: int = 25) -> str:
        """The log's last lines (only its end is read: a model server's log grows large)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 64 * 1024))
                return "\n".join(log.read().decode(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def describe(self, what: str) -> str:
        return f"{self.name} {what}; last lines of {shown(self.log_path)}:\n{self.log_tail()}"


def describe_exit(code: int | None) -> str:
    """`exit status 1`, `killed by SIGKILL`: how a process ended, as a person reads it."""
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def shown(path: Path) -> Path:
    """A path relative to the working folder when it is inside it (shorter to read), else as it is."""
    return path.relative_to(Path.cwd()) if path.is_absolute() and path.is_relative_to(Path.cwd()) else path


# pid -> (parent's pid, process group, start time): with its start time, a pid names one process, not a reused one.
ProcessTable = dict[int, tuple[int, int, int]]


def process_table() -> ProcessTable:
    """Every live process, read from /proc (zombies hold no port or memory: left out)."""
    table: ProcessTable = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat_file:
                stat = stat_file.read()
        except OSError:
            continue  # it ended while we looked
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields[0] not in (b"Z", b"X"):
            table[int(entry.name)] = (int(fields[1]), int(fields[2]), int(fields[19]))
    return table


def server_processes(pgid: int, table: ProcessTable | None = None, known: Mapping[int, int] = {}) -> dict[int, int]:
    """pid -> start time of every process of the server that leads group `pgid`: the group, all that descends
    from it (PostgreSQL's backends call setsid() and leave the group), and those of `known` still running
    (once its parent is dead, a process descends from no one: only having seen it before finds it)."""
    table = process_table() if table is None else table
    found = {pid for pid, (_, group, _) in table.items() if group == pgid}
    found |= {pid for pid, start in known.items() if pid in table and table[pid][2] == start}
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return {pid: table[pid][2] for pid in found}


def group_members(pgid: int) -> list[int]:
    """The live processes of process group `pgid` alone."""
    return [pid for pid, (_, group, _) in process_table().items() if group == pgid]


def stop_groups(
    groups: Iterable[tuple[int, int]],
    *,
    grace_s: float,
    leaders: Iterable[subprocess.Popen[bytes]] = (),
    known: Mapping[int, Mapping[int, int]] = {},
) -> None:
    """Stop servers together, each given as (pgid, signal): the signal goes to its leader (the server's main
    process knows how to stop its children), and once `grace_s` has passed SIGKILL goes to all its processes
    (server_processes; `known` maps a pgid to those seen earlier). Once a leader is gone, what is left gets
    SIGTERM, and SIGKILL ORPHAN_GRACE_S later. `leaders` are our own children, reaped on the way."""
    pending = {pgid: server_processes(pgid, known=known.get(pgid, {})) for pgid, _ in groups}
    for pgid, sig in groups:
        if pgid in pending[pgid] and sig != signal.SIGKILL:
            _send([pgid], sig)
        else:
            _send(pending[pgid], sig, group=pgid)
        _send(pending[pgid], signal.SIGCONT, group=pgid)  # a paused (SIGSTOPped) process handles no signal
    deadline = time.monotonic() + grace_s
    leader_gone: dict[int, float] = {}
    while pending:
        for process in leaders:
            process.poll()  # our own exited child is a zombie until reaped
        table, now = process_table(), time.monotonic()
        for pgid in list(pending):
            processes = pending[pgid] = server_processes(pgid, table, pending[pgid])
            if not processes:
                del pending[pgid]
                continue
            if pgid not in processes and pgid not in leader_gone:
                leader_gone[pgid] = now
                _send(processes, signal.SIGTERM, group=pgid)  # orphans whose parent did not pass the stop on
            if now >= deadline or now - leader_gone.get(pgid, now) >= ORPHAN_GRACE_S:
                _send(processes, signal.SIGKILL, group=pgid)
                _wait_gone(pgid, processes, KILL_WAIT_S)
                del pending[pgid]
        if pending:
            time.sleep(0.05)
    for process in leaders:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(KILL_WAIT_S)


def _send(pids: Iterable[int], sig: int, *, group: int | None = None) -> None:
    """`sig` to each of `pids`, and to process group `group` (it also reaches what forked since we looked)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    if group is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)


def _wait_gone(pgid: int, processes: Mapping[int, int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while server_processes(pgid, known=processes) and time.monotonic() < deadline:
        time.sleep(0.02)


class Watchdog:
    """A tiny process that stops the process groups it was told about once the process that started it is gone,
    however that one ended (SIGKILL, the OOM killer): it reads a pipe that only the runner holds open, and
    end-of-file means the runner is gone. It cannot help if it is killed too (`kill -9` of both)."""

    def __init__(self, *, grace_s: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.local_server", "--watchdog", str(grace_s)],
            stdin=subprocess.PIPE,
            cwd=ROOT,
            start_new_session=True,  # Ctrl-C in the terminal is the runner's to handle, not the watchdog's
        )

    def watch(self, server: LocalServer) -> None:
        if server.process is not None:
            self._tell(f"+ {server.process.pid} {server.stop_signal}")

    def forget(self, server: LocalServer) -> None:
        if server.process is not None:
            self._tell(f"- {server.process.pid} 0")

    def close(self) -> None:
        """A clean end: the groups are stopped already, so the watchdog finds nothing to do and exits."""
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(KILL_WAIT_S)

    def _tell(self, line: str) -> None:
        with contextlib.suppress(OSError):  # a watchdog that died only takes away the safety net
            assert self.process.stdin is not None
            self.process.stdin.write(line.encode() + b"\n")
            self.process.stdin.flush()


def _watchdog(grace_s: float) -> int:
    """The watchdog's body: track `+ pgid signal` / `- pgid` lines until end-of-file, then stop what is left."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # a closing terminal or a Ctrl-C must not end it before the runner
    groups: dict[int, int] = {}
    for line in sys.stdin.buffer:
        op, pgid, signum = line.split()
        if op == b"+":
            groups[int(pgid)] = int(signum)
        else:
            groups.pop(int(pgid), None)
    stop_groups(list(groups.items()), grace_s=grace_s)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--watchdog"]:
        sys.exit(_watchdog(float(sys.argv[2])))
    sys.exit("usage: python -m services.local_server --watchdog GRACE_S (started by services.supervisor)")
