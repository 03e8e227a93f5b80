"""Keeps local servers running: restarts one that dies, with exponential backoff, and gives up on one that crash-loops.

    supervisor = Supervisor(RestartPolicy.from_env(os.environ), say=print)
    supervisor.start(server); supervisor.wait_ready([server], timeout_s=60)
    supervisor.run()        # until Ctrl-C (or until every server has been given up on)
    supervisor.stop_all(first=["gateway"])

A server that exits (or is not ready again within its `ready_timeout_s` after a restart) is a failure: what
is left of its process group is killed (an orphaned engine would keep its port and memory), the exit status
and the log's last lines are reported, and it starts again after `backoff_s` x 2^(failures-1), at most
`backoff_max_s`. The `max_failures`-th failure within `window_s` gives it up; the other servers keep running.
Only liveness is watched: a server that hangs is the gateway's health probes' business.
"""

from __future__ import annotations

import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields

from services.local_server import LocalServer, ServerError, Watchdog, describe_exit, process_table, shown, stop_groups

# Environment variables of RestartPolicy's fields (the stack runner reads them from the environment, then .env).
POLICY_ENV = {
    "max_failures": "CITADEL_RESTART_MAX_FAILURES",
    "window_s": "CITADEL_RESTART_WINDOW_S",
    "backoff_s": "CITADEL_RESTART_BACKOFF_S",
    "backoff_max_s": "CITADEL_RESTART_BACKOFF_MAX_S",
}


@dataclass(frozen=True)
class RestartPolicy:
    """How long to wait before a restart, and when to stop trying."""

    max_failures: int = 5
    window_s: float = 600.0
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RestartPolicy:
        values: dict[str, float | int] = {}
        for item in fields(cls):
            name = POLICY_ENV[item.name]
            if env.get(name, "").strip():
                try:
                    values[item.name] = int(env[name]) if item.name == "max_failures" else float(env[name])
                except ValueError:
                    raise ValueError(f"{name} must be a number, not {env[name]!r}") from None
        policy = cls(**values)  # type: ignore[arg-type]
        if policy.max_failures < 1 or min(policy.window_s, policy.backoff_s, policy.backoff_max_s) < 0:
            raise ValueError(f"{', '.join(POLICY_ENV.values())}: a positive count and non-negative seconds")
        return policy

    def delay(self, failures: int) -> float:
        """Seconds before the restart that follows the `failures`-th recent failure: 1, 2, 4, ... x backoff_s."""
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** max(0, failures - 1)))


@dataclass(eq=False)
class _Watched:
    server: LocalServer
    supervised: bool = False  # from its first readiness on; a failure before that is the starter's to handle
    failures: deque[float] = field(default_factory=deque)
    restart_at: float | None = None
    down_since: float | None = None
    given_up: bool = False


class Supervisor:
    """Starts servers, waits until they are ready, restarts those that die, and stops them all; see the module."""

    def __init__(
        self,
        policy: RestartPolicy | None = None,
        *,
        say: Callable[[str], None] = print,
        watchdog: bool = True,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self.say = say
        self.watched: list[_Watched] = []
        # What a person or a test wants to know afterwards: (time, server, "failed" | "restarted" | "recovered"
        # | "gave up").
        self.events: list[tuple[float, str, str]] = []
        self.watchdog = Watchdog() if watchdog else None

    def start(self, server: LocalServer) -> LocalServer:
        server.start()
        if self.watchdog is not None:
            self.watchdog.watch(server)
        self.watched.append(_Watched(server))
        self.say(f"{server.name}: starting (pid {server.pid}, log {shown(server.log_path)})")
        return server

    def wait_ready(self, servers: Iterable[LocalServer], *, timeout_s: float, note_every_s: float = 15.0) -> None:
        """Until every one of `servers` is ready (reported one by one), supervising the others meanwhile.
        ServerError, with its log's end, when one of them exits first or `timeout_s` passes."""
        pending = [self._entry(server) for server in servers]
        deadline = time.monotonic() + timeout_s
        last_note = time.monotonic()
        while pending:
            for entry in list(pending):
                server = entry.server
                server.fail_if_exited()
                if server.ready_check():
                    entry.supervised = True
                    pending.remove(entry)
                    self.say(f"{server.name}: ready after {time.monotonic() - server.started_at:.0f}s")
            self.tick()
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ServerError(f"timed out after {timeout_s:.0f}s waiting for: {_names(pending)}")
            if time.monotonic() - last_note > note_every_s:
                self.say(f"still waiting for {_names(pending)} (model servers take a minute or two on CPU)")
                last_note = time.monotonic()
            time.sleep(min(entry.server.poll_s for entry in pending))

    def run(self, *, poll_s: float = 0.5, until: Callable[[], bool] = lambda: False) -> None:
        """Supervise until `until()` is true or every server has been given up on."""
        while not until() and not all(entry.given_up for entry in self.watched):
            self.tick()
            time.sleep(poll_s)

    @property
    def given_up(self) -> list[str]:
        return [entry.server.name for entry in self.watched if entry.given_up]

    def tick(self) -> None:
        """One look at every supervised server: note deaths, start again those whose backoff has passed."""
        table = process_table()  # one look at /proc for all: each server notes its processes
        for entry in self.watched:
            if not entry.supervised or entry.given_up:
                continue
            server, now = entry.server, time.monotonic()
            server.remember(table)
            if entry.restart_at is not None:
                if now >= entry.restart_at:
                    entry.restart_at = None
                    server.start()
                    if self.watchdog is not None:
                        self.watchdog.watch(server)
                    self._event(server, "restarted", f"started again (pid {server.pid})")
            elif server.returncode is not None:
                self._failed(entry, f"exited ({describe_exit(server.returncode)})")
            elif entry.down_since is not None:
                if server.ready_check():
                    self._event(server, "recovered", f"ready again, {now - entry.down_since:.1f}s after it went down")
                    entry.down_since = None
                elif time.monotonic() - server.started_at > server.ready_timeout_s:
                    self._failed(entry, f"was not ready {server.ready_timeout_s:.0f}s after its restart")

    def stop_all(self, *, first: Iterable[str] = ()) -> None:
        """Stop the servers named in `first` (the gateway: it finishes its requests and flushes its audit log
        while the database still runs), then all the others together. Nothing of their groups is left."""
        self.watched, entries = [], self.watched  # nothing is restarted from here on
        started = [entry.server for entry in entries if entry.server.process is not None]
        early = [server for server in started if server.name in set(first)]
        alive = [server.name for server in started if server.running]
        if alive:
            self.say("stopping " + ", ".join(alive))
        for batch in (early, [server for server in started if server not in early]):
            if batch:
                leaders = [server.process for server in batch if server.process is not None]
                groups = [(leader.pid, server.stop_signal) for leader, server in zip(leaders, batch, strict=True)]
                known = {leader.pid: server.known for leader, server in zip(leaders, batch, strict=True)}
                grace_s = max(server.stop_grace_s for server in batch)
                stop_groups(groups, grace_s=grace_s, leaders=leaders, known=known)
        if self.watchdog is not None:
            self.watchdog.close()
        if alive:
            self.say("stopped")

    def _failed(self, entry: _Watched, what: str) -> None:
        server, now = entry.server, time.monotonic()
        if self.watchdog is not None:
            self.watchdog.forget(server)
        server.stop(signal.SIGKILL)  # its orphans (engine, workers) would keep the port and the memory
        entry.down_since = entry.down_since if entry.down_since is not None else now
        entry.failures.append(now)
        while entry.failures and entry.failures[0] < now - self.policy.window_s:
            entry.failures.popleft()
        self._event(server, "failed", server.describe(what), at=now)
        count = len(entry.failures)
        if count >= self.policy.max_failures:
            entry.given_up = True
            self._event(
                server,
                "gave up",
                f"giving up after {count} failures within {self.policy.window_s:.0f}s; its log is "
                f"{shown(server.log_path)}. The rest of the stack keeps running; restart the stack once fixed.",
            )
            return
        delay = self.policy.delay(count)
        entry.restart_at = now + delay
        self.say(f"{server.name}: restarting in {delay:.1f}s (failure {count} of {self.policy.max_failures} "
                 f"allowed within {self.policy.window_s:.0f}s)")  # fmt: skip

    def _entry(self, server: LocalServer) -> _Watched:
        return next(entry for entry in self.watched if entry.server is server)

    def _event(self, server: LocalServer, kind: str, message: str, *, at: float | None = None) -> None:
        self.events.append((time.monotonic() if at is None else at, server.name, kind))
        self.say(message if message.startswith(server.name) else f"{server.name}: {message}")


def _names(entries: Iterable[_Watched]) -> str:
    return ", ".join(entry.server.name for entry in entries)
