"""The local stack's supervision with tiny real processes: process-group stops (grandchildren included), a crash's
orphans killed so the port is free again, backoff timing, giving up after N failures in a window, and the
watchdog that stops everything when the runner itself is SIGKILLed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from services.local_server import (
    ORPHAN_GRACE_S,
    LocalServer,
    ServerError,
    describe_exit,
    group_members,
    server_processes,
)
from services.supervisor import POLICY_ENV, RestartPolicy, Supervisor
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
# A grandchild that ignores SIGTERM, as vLLM's engine core does once its API server is gone (it says when it does).
STUBBORN_CHILD = "import signal as s, time; s.signal(s.SIGTERM, s.SIG_IGN); print(flush=True); time.sleep(120)"


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def wait_for(check, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def read_pids(path: Path) -> list[int]:
    wait_for(lambda: path.exists() and len(path.read_text().split()) >= 2)
    return [int(word) for word in path.read_text().split()]


def parent_with_stubborn_child(pids: Path, *, ignore_term: bool = False) -> list[str]:
    """A server that forks a SIGTERM-ignoring child and writes both pids to `pids`."""
    return python(f"""
        import signal, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {STUBBORN_CHILD!r}], stdout=subprocess.PIPE)
        child.stdout.readline()
        open({str(pids)!r}, "w").write(f"{{__import__('os').getpid()}} {{child.pid}}")
        if {ignore_term}:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("serving", flush=True)
        time.sleep(120)
    """)


def test_stop_kills_the_whole_group_soon_after_its_leader_exits(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    server = LocalServer("parent", parent_with_stubborn_child(pids), log_path=tmp_path / "parent.log", stop_grace_s=30)
    server.start()
    leader, child = read_pids(pids)
    assert set(group_members(leader)) == {leader, child}
    started = time.monotonic()
    code = server.stop()
    took = time.monotonic() - started
    assert code == -signal.SIGTERM
    assert not alive(leader) and not alive(child)
    # The leader went at once; its orphan got ORPHAN_GRACE_S, not the 30 s grace, then SIGKILL.
    assert ORPHAN_GRACE_S <= took < ORPHAN_GRACE_S + 3


def test_stop_kills_the_group_after_the_grace_when_the_leader_ignores_sigterm(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    command = parent_with_stubborn_child(pids, ignore_term=True)
    server = LocalServer("deaf", command, log_path=tmp_path / "deaf.log", stop_grace_s=1.0)
    server.start()
    leader, child = read_pids(pids)
    wait_for(lambda: "serving" in server.log_tail())
    started = time.monotonic()
    assert server.stop() == -signal.SIGKILL
    assert 1.0 <= time.monotonic() - started < 4
    assert not alive(leader) and not alive(child) and group_members(leader) == []


def test_children_that_leave_the_group_are_stopped_too_even_after_their_parent_was_killed(tmp_path: Path) -> None:
    """PostgreSQL's backends call setsid(): not in the postmaster's group, yet its processes all the same."""
    pids = tmp_path / "pids"
    escapee = "import os, time; os.setsid(); time.sleep(120)"
    command = python(f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {escapee!r}])
        time.sleep(0.3)
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
        time.sleep(120)
    """)
    supervisor = Supervisor(RestartPolicy(max_failures=1), say=lambda line: None, watchdog=False)
    server = LocalServer("postmaster", command, log_path=tmp_path / "postmaster.log")
    supervisor.start(server)
    supervisor.wait_ready([server], timeout_s=10)
    leader, child = read_pids(pids)
    assert group_members(leader) == [leader] and set(server_processes(leader)) == {leader, child}
    supervisor.tick()  # notes its processes, as every tick does
    os.kill(leader, signal.SIGKILL)  # someone else's kill -9: the child is reparented, descends from no one now
    wait_for(lambda: not alive(leader))
    supervisor.tick()
    assert supervisor.given_up == ["postmaster"] and not alive(child)


def test_wait_ready_reports_the_exit_status_and_the_log_tail(tmp_path: Path) -> None:
    server = LocalServer(
        "broken",
        python("print('weights not found: /nowhere', flush=True); raise SystemExit(3)"),
        log_path=tmp_path / "broken.log",
        ready_check=lambda: False,
    )
    server.start()
    with pytest.raises(ServerError) as failure:
        server.wait_ready(10)
    assert "broken exited (exit status 3) before it was ready" in str(failure.value)
    assert "weights not found: /nowhere" in str(failure.value)
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"


def test_policy_backoff_doubles_up_to_its_cap_and_reads_the_environment() -> None:
    policy = RestartPolicy(backoff_s=1, backoff_max_s=10)
    assert [policy.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert RestartPolicy.from_env({}) == RestartPolicy(max_failures=5, window_s=600, backoff_s=1, backoff_max_s=60)
    custom = RestartPolicy.from_env({POLICY_ENV["max_failures"]: "3", POLICY_ENV["window_s"]: "60"})
    assert (custom.max_failures, custom.window_s) == (3, 60)
    with pytest.raises(ValueError, match="CITADEL_RESTART_BACKOFF_S"):
        RestartPolicy.from_env({"CITADEL_RESTART_BACKOFF_S": "soon"})


def test_a_crashed_servers_orphans_are_killed_so_its_restart_gets_the_port(tmp_path: Path) -> None:
    """kill -9 of the main process leaves its child holding the port; the restart must find the port free."""
    port = free_port()
    pids = tmp_path / "pids"
    # The listening socket lives in a child, as a vLLM worker may hold one; the main process only waits.
    command = python(f"""
        import os, subprocess, sys, time
        listener = "import socket, time; s = socket.socket(); s.bind(('', {port})); s.listen(); time.sleep(120)"
        child = subprocess.Popen([sys.executable, "-c", listener])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
        print("listening", flush=True)
        child.wait()
        print("the listener failed", flush=True)
        raise SystemExit(1)
    """)

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    lines: list[str] = []
    supervisor = Supervisor(RestartPolicy(backoff_s=0.1), say=lines.append, watchdog=False)
    server = LocalServer("model", command, log_path=tmp_path / "model.log", ready_check=listening)
    try:
        supervisor.start(server)
        supervisor.wait_ready([server], timeout_s=10)
        leader, child = read_pids(pids)
        pids.unlink()
        os.kill(leader, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while not any(kind == "recovered" for _, _, kind in supervisor.events):
            assert time.monotonic() < deadline, "\n".join(lines)
            supervisor.tick()
            time.sleep(0.05)
        assert not alive(child) and group_members(leader) == []
        new_leader, new_child = read_pids(pids)
        assert new_leader != leader and alive(new_child)
        text = "\n".join(lines)
        assert "model exited (killed by SIGKILL)" in text and "listening" in text  # status and log tail
        assert "model: restarting in 0.1s (failure 1 of 5" in text
        assert server.log_tail().count("listening") == 2  # the restart appended to the crashed run's log
    finally:
        supervisor.stop_all()
    assert not alive(server.process.pid if server.process else 0)


def test_backoff_then_give_up_after_n_failures_while_the_rest_keeps_running(tmp_path: Path) -> None:
    policy = RestartPolicy(max_failures=4, window_s=60, backoff_s=0.2, backoff_max_s=10)
    lines: list[str] = []
    supervisor = Supervisor(policy, say=lines.append, watchdog=False)
    # Up long enough to be ready, then it crashes: the supervisor restarts it each time.
    crash = python("import time; print('oops', flush=True); time.sleep(0.1); raise SystemExit(7)")
    crasher = LocalServer("crasher", crash, log_path=tmp_path / "crasher.log")
    steady = LocalServer("steady", python("import time; time.sleep(120)"), log_path=tmp_path / "steady.log")
    try:
        for server in (crasher, steady):
            supervisor.start(server)
        supervisor.wait_ready([crasher, steady], timeout_s=10)
        steady_pid = steady.pid
        supervisor.run(poll_s=0.02, until=lambda: bool(supervisor.given_up) or len(supervisor.events) > 20)
        assert supervisor.given_up == ["crasher"]
        assert crasher.starts == 4 and steady.running and steady.pid == steady_pid
        failed = [t for t, name, kind in supervisor.events if name == "crasher" and kind == "failed"]
        restarted = [t for t, name, kind in supervisor.events if name == "crasher" and kind == "restarted"]
        assert len(failed) == 4 and len(restarted) == 3
        for attempt, (down, up) in enumerate(zip(failed, restarted, strict=False), start=1):
            # Each restart waits its backoff (0.2, 0.4, 0.8 s), and not much longer (one poll, a slow machine).
            assert policy.delay(attempt) <= up - down < policy.delay(attempt) + 0.5, (attempt, up - down)
        text = "\n".join(lines)
        assert "crasher exited (exit status 7)" in text and "oops" in text
        assert f"crasher: giving up after 4 failures within 60s; its log is {tmp_path / 'crasher.log'}" in text
    finally:
        supervisor.stop_all()
    assert not steady.running


def test_failures_further_apart_than_the_window_never_give_up(tmp_path: Path) -> None:
    # Each failure comes more than window_s after the previous one: only one is ever counted.
    policy = RestartPolicy(max_failures=2, window_s=0.3, backoff_s=0.5, backoff_max_s=0.5)
    supervisor = Supervisor(policy, say=lambda line: None, watchdog=False)
    crasher = LocalServer("crasher", python("import time; time.sleep(0.05)"), log_path=tmp_path / "crasher.log")
    try:
        supervisor.start(crasher)
        supervisor.wait_ready([crasher], timeout_s=10)
        supervisor.run(poll_s=0.02, until=lambda: crasher.starts >= 4 or bool(supervisor.given_up))
        assert supervisor.given_up == [] and crasher.starts >= 4
    finally:
        supervisor.stop_all()


RUNNER = """
import sys, time
from pathlib import Path
from services.local_server import LocalServer
from services.supervisor import Supervisor

supervisor = Supervisor(say=lambda line: None)
server = LocalServer("server", sys.argv[2:], log_path=Path(sys.argv[1]))
supervisor.start(server)
print(server.pid, flush=True)
time.sleep(120)
"""


def test_the_watchdog_stops_every_group_when_the_runner_is_sigkilled(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", RUNNER, str(tmp_path / "server.log"), *parent_with_stubborn_child(pids)]
    runner = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert runner.stdout is not None
        leader = int(runner.stdout.readline())
        _, child = read_pids(pids)
        assert alive(leader) and alive(child)
        runner.kill()  # no handler runs, no finally: only the watchdog is left to clean up
        runner.wait()
        # SIGTERM to the leader (it exits), its orphan SIGKILLed ORPHAN_GRACE_S later.
        wait_for(lambda: not alive(leader) and not alive(child), timeout_s=ORPHAN_GRACE_S + 5)
        assert group_members(leader) == []
    finally:
        runner.kill()
        for pid in read_pids(pids):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
