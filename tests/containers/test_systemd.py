"""deploy/systemd's units for real: a container booted with Debian's systemd as PID 1, installed as the README says.

The image (docker/systemd-host.Dockerfile, built by services/containers/systemd_host.py) is a stand-in for a host:
the repository at /opt/citadel with its two venvs, the user `citadel`, /etc/citadel/citadel.env and
/etc/citadel/vllm-phi3.env, the units and their drop-ins (deploy/systemd/test-host/), PostgreSQL and Redis as
Debian's own system services. At boot systemd starts `citadel-vllm@phi3` (demo mode: the entrypoint makes the
demo model on first start) and `citadel-gateway` (its ExecStartPre migrates). The tests then use it as an
operator and a client would: a chat completion through the published port, the sandbox and limits in force,
`systemctl kill -s KILL` of the model server (systemd restarts it), `systemctl stop citadel-gateway` with a
stream in flight (it drains).

Run in the containers tier after the compose stack's tests; it needs their images (citadel/gateway,
citadel/vllm-cpu). Progress and the measured times go to the terminal (stderr).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from services.containers import progress
from services.containers.engine import cache_root
from services.containers.progress import step
from services.containers.systemd_host import build_systemd_host
from tests.support.catalogs import ADMIN_KEY
from tests.support.ports import free_port

pytestmark = [pytest.mark.containers, pytest.mark.timeout(3600)]

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MODEL_UNIT = "citadel-vllm@phi3"
GATEWAY_UNIT = "citadel-gateway"
MODEL_HEALTH = "http://127.0.0.1:11403/health"  # CITADEL_VLLM_PORT of /etc/citadel/vllm-phi3.env
GATEWAY_PORT = 8000  # API_GATEWAY_PORT (.env.example), inside the container
BOOT_TIMEOUT_S = 120
# First start: the entrypoint makes the demo model (about 45 s on one CPU), then vLLM starts (60-90 s); much more
# when the machine is shared with the compose stack's five model servers.
MODEL_START_TIMEOUT_S = 900
GATEWAY_TIMEOUT_S = 120
# The streamed answer that is in flight while the gateway stops: long enough to outlast the stop's first
# seconds (about 85 tokens/s on a busy 2-core machine), well within CITADEL_SHUTDOWN_GRACE_S (30 s).
DRAIN_TOKENS = 1000


def say(message: str) -> None:
    progress.say(f"systemd host: {message}")


def wait_until(
    what: str,
    check: Callable[[], bool],
    *,
    timeout_s: float,
    interval_s: float = 1.0,
    diagnose: Callable[[], str] = lambda: "",
) -> float:
    """Poll `check` until it is true; print what is awaited and how long it took; fail with `diagnose()` late."""
    say(f"waiting for {what} (at most {timeout_s:.0f} s) ...")
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s\n{diagnose()}")
        time.sleep(interval_s)
    elapsed = time.monotonic() - started
    say(f"{what}: after {elapsed:.1f} s")
    return elapsed


@dataclass(frozen=True)
class Host:
    """The running container: commands inside it (`docker exec`), and the gateway's published URL."""

    name: str
    env: dict[str, str]
    url: str

    def run(self, *command: str, check: bool = True, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["docker", "exec", self.name, *command],
            env=self.env, capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"`{' '.join(command)}` failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        return result

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        output = self.run("systemctl", "show", unit, *(f"--property={name}" for name in properties)).stdout
        return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)

    def main_pid(self, unit: str) -> int:
        return int(self.show(unit, "MainPID")["MainPID"])

    def journal(self, unit: str, lines: int = 60) -> str:
        result = self.run("journalctl", "--unit", unit, "--no-pager", "--lines", str(lines), check=False)
        return f"--- journal of {unit} ---\n{result.stdout[-12000:]}"

    def status_code(self, url: str) -> int:
        """HTTP status of a GET from inside the container; 0 when nothing answers (curl's exit code 7 and the like)."""
        result = self.run("curl", "--silent", "--max-time", "5", "--output", "/dev/null", "--write-out",
                          "%{http_code}", url, check=False)  # fmt: skip
        return int(result.stdout or 0) if result.returncode == 0 else 0

    def psql(self, sql: str) -> str:
        return self.run("runuser", "-u", "postgres", "--", "psql", "-d", "citadel_ai", "-Atc", sql).stdout.strip()

    def read(self, path: str) -> str:
        return self.run("cat", path).stdout


def _system_running(host: Host) -> bool:
    state = host.run("systemctl", "is-system-running", check=False).stdout.strip()
    if state == "degraded":
        failed = host.run("systemctl", "--failed", "--no-pager", check=False).stdout
        raise AssertionError(f"systemd reports failed units at boot:\n{failed}")
    return state == "running"


def _phi3_in_rotation(host: Host) -> bool:
    try:
        document = httpx.get(f"{host.url}/health/ready", timeout=5).json()
    except (httpx.TransportError, ValueError):
        return False
    return bool(document.get("checks", {}).get("model:phi3", {}).get("status") == "healthy")


@pytest.fixture(scope="module")
def host(docker_env: dict[str, str]) -> Iterator[Host]:
    tag = build_systemd_host(env=docker_env, cache=cache_root() / "images")
    port = free_port()
    name = f"citadel-systemd-{uuid.uuid4().hex[:8]}"
    command = [
        "docker", "run", "--detach", "--name", name,
        # systemd as PID 1 without --privileged (which fails on these machines: the host lacks CAP_SYS_RESOURCE):
        # CAP_SYS_ADMIN for the mount namespaces of the units' sandboxes, no seccomp or AppArmor profile (systemd
        # installs its own filters), tmpfs where systemd expects them, and the cgroup tree systemd manages.
        "--cap-add", "SYS_ADMIN",
        "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
        "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
        "--volume", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--cgroupns", "host",
        # A share of a 2-core machine that may run the compose stack beside it.
        "--cpus", "1.5", "--memory", "6g", "--shm-size", "1g",
        "--publish", f"127.0.0.1:{port}:{GATEWAY_PORT}",
        tag,
    ]  # fmt: skip
    with step(f"starting {name} from {tag} (systemd as PID 1, gateway on 127.0.0.1:{port})"):
        started = subprocess.run(command, env=docker_env, capture_output=True, text=True, check=False)
        assert started.returncode == 0, f"docker run failed:\n{started.stderr}"
    host = Host(name=name, env=docker_env, url=f"http://127.0.0.1:{port}")
    try:
        wait_until("systemd to finish booting", lambda: _system_running(host), timeout_s=BOOT_TIMEOUT_S)
        wait_until(
            f"{MODEL_UNIT} to answer /health (first start: demo model made, then vLLM)",
            lambda: host.status_code(MODEL_HEALTH) == 200,
            timeout_s=MODEL_START_TIMEOUT_S, interval_s=2, diagnose=lambda: host.journal(MODEL_UNIT),
        )  # fmt: skip
        wait_until(
            f"{GATEWAY_UNIT} to put phi3 in rotation (/health/ready)",
            lambda: _phi3_in_rotation(host),
            timeout_s=GATEWAY_TIMEOUT_S, diagnose=lambda: host.journal(GATEWAY_UNIT),
        )  # fmt: skip
        yield host
    finally:
        with step(f"removing {name}"):
            subprocess.run(["docker", "rm", "--force", "--volumes", name], env=docker_env, capture_output=True)


def chat(host: Host, **extra: Any) -> httpx.Response:
    body = {"model": "phi3", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16, **extra}
    return httpx.post(f"{host.url}/v1/chat/completions", json=body, headers=ADMIN, timeout=120)


def test_boot_runs_the_units_as_the_readme_installs_them(host: Host) -> None:
    for unit in ("postgresql@15-main", "redis-server", MODEL_UNIT, GATEWAY_UNIT):
        state = host.show(unit, "ActiveState", "SubState", "UnitFileState")
        assert (state["ActiveState"], state["SubState"]) == ("active", "running"), (unit, state)
    for unit in (MODEL_UNIT, GATEWAY_UNIT):
        assert host.show(unit, "UnitFileState")["UnitFileState"] == "enabled", unit
        user = host.run("ps", "-o", "user=", "-p", str(host.main_pid(unit))).stdout.strip()
        assert user == "citadel", (unit, user)
    # The model unit made the demo model on its first start, as the service user, in its cache directory.
    assert host.run("stat", "-c", "%U", "/var/cache/citadel/demo-chat/config.json").stdout.strip() == "citadel"
    # The gateway's ExecStartPre migrated the database named in citadel.env ...
    assert "at revision" in host.journal(GATEWAY_UNIT, lines=400)
    assert host.psql("SELECT to_regclass('llm.audit_log') IS NOT NULL") == "t"
    # ... and the gateway reaches PostgreSQL and Redis, the host's system services, through DATABASE_URL/REDIS_URL.
    checks = httpx.get(f"{host.url}/health/ready", timeout=10).json()["checks"]
    assert checks["postgres"]["status"] == "healthy", checks["postgres"]
    assert checks["redis"]["status"] == "healthy", checks["redis"]


def test_a_chat_completion_through_the_gateway_answers(host: Host) -> None:
    response = chat(host)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == "phi3"
    assert isinstance(answer["choices"][0]["message"]["content"], str)
    assert 0 < answer["usage"]["completion_tokens"] <= 16


def _mounts(host: Host, pid: int) -> dict[str, tuple[str, str]]:
    """Mount point -> (root within its filesystem, options), as the process sees them (the last mount wins)."""
    mounts = {}
    for line in host.read(f"/proc/{pid}/mountinfo").splitlines():
        fields = line.split()
        mounts[fields[4]] = (fields[3], fields[5])
    return mounts


def _nofile(host: Host, pid: int) -> tuple[int, int]:
    line = next(line for line in host.read(f"/proc/{pid}/limits").splitlines() if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def _cgroup_value(host: Host, unit: str, files: tuple[str, ...]) -> str:
    """The first of the cgroup files (v1 controller paths, then v2) that exists for the unit's control group."""
    group = host.show(unit, "ControlGroup")["ControlGroup"]
    for file in files:
        result = host.run("cat", f"/sys/fs/cgroup/{file.replace('%s', group)}", check=False)
        if result.returncode == 0:
            return result.stdout.strip()
    raise AssertionError(f"none of {files} exists for {group}")


def test_the_units_sandbox_and_limits_are_in_force(host: Host) -> None:
    sandbox = ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
               "ProtectKernelTunables", "ProtectControlGroups", "RestrictSUIDSGID")  # fmt: skip
    writable = {GATEWAY_UNIT: "/var/lib/citadel", MODEL_UNIT: "/var/cache/citadel"}
    for unit, state_dir in writable.items():
        settings = host.show(unit, *sandbox)
        assert settings["NoNewPrivileges"] == "yes" and settings["ProtectSystem"] == "strict", (unit, settings)
        assert settings["PrivateTmp"] == "yes" and settings["ProtectKernelTunables"] == "yes", (unit, settings)
        assert settings["PrivateDevices"] == ("yes" if unit == GATEWAY_UNIT else "no"), (unit, settings)
        pid = host.main_pid(unit)
        assert "NoNewPrivs:\t1" in host.read(f"/proc/{pid}/status"), unit
        mounts = _mounts(host, pid)
        # ProtectSystem=strict: the whole tree read-only (the repository and the venvs with it) but for the
        # unit's own directory; ProtectHome: /home and /root out of reach; PrivateTmp: a /tmp of its own.
        assert "ro" in mounts["/"][1].split(","), (unit, mounts["/"])
        assert "rw" in mounts[state_dir][1].split(","), (unit, mounts.get(state_dir))
        assert "/home" in mounts and "/root" in mounts, unit
        assert "systemd-private" in mounts["/tmp"][0], (unit, mounts["/tmp"])
        # LimitNOFILE=65536, or the most this systemd may give (it cannot raise PID 1's hard limit in a container
        # without CAP_SYS_RESOURCE): never the default soft limit of 1024.
        ceiling = min(65536, _nofile(host, 1)[1])
        assert _nofile(host, pid) == (ceiling, ceiling), unit
    # The model server's drop-in (README: `systemctl edit citadel-vllm@phi3`) reaches its cgroup: 1 CPU, 4 GiB.
    quota = _cgroup_value(host, MODEL_UNIT, ("cpu%s/cpu.cfs_quota_us", "cpu,cpuacct%s/cpu.cfs_quota_us", "%s/cpu.max"))
    assert quota.split()[0] == "100000", quota
    memory = _cgroup_value(host, MODEL_UNIT, ("memory%s/memory.limit_in_bytes", "%s/memory.max"))
    assert int(memory) == 4 * 2**30


def _unit_pids(host: Host, unit: str) -> set[int]:
    procs = _cgroup_value(host, unit, ("systemd%s/cgroup.procs", "%s/cgroup.procs"))
    return {int(pid) for pid in procs.split()}


def test_a_killed_model_server_is_restarted_by_systemd(host: Host) -> None:
    before = host.show(MODEL_UNIT, "MainPID", "NRestarts")
    old_pids = _unit_pids(host, MODEL_UNIT)
    assert len(old_pids) > 1, "vLLM runs as a tree of processes (API server, engine core)"
    killed_at = time.monotonic()
    host.run("systemctl", "kill", "--signal", "KILL", MODEL_UNIT)
    say(f"{MODEL_UNIT}: SIGKILL sent to its {len(old_pids)} processes")
    wait_until(
        f"systemd to restart {MODEL_UNIT} (RestartSec=10)",
        lambda: host.show(MODEL_UNIT, "NRestarts", "ActiveState")
        == {"NRestarts": str(int(before["NRestarts"]) + 1), "ActiveState": "active"},
        timeout_s=60, diagnose=lambda: host.journal(MODEL_UNIT),
    )  # fmt: skip
    after = host.show(MODEL_UNIT, "MainPID", "ActiveState")
    assert after["ActiveState"] == "active" and after["MainPID"] != before["MainPID"], after
    # KillMode=control-group: nothing of the killed server is left behind.
    assert not old_pids & _unit_pids(host, MODEL_UNIT)
    assert host.run("ps", "-o", "pid=", "-p", ",".join(map(str, old_pids)), check=False).stdout.strip() == ""
    wait_until(
        f"the restarted {MODEL_UNIT} to answer /health",
        lambda: host.status_code(MODEL_HEALTH) == 200,
        timeout_s=MODEL_START_TIMEOUT_S, interval_s=1, diagnose=lambda: host.journal(MODEL_UNIT),
    )  # fmt: skip
    recovered_s = time.monotonic() - killed_at
    say(f"{MODEL_UNIT}: answered /health {recovered_s:.1f} s after the SIGKILL (time to recovery)")
    wait_until(
        "the gateway to serve phi3 again",
        lambda: chat(host).status_code == 200,
        timeout_s=GATEWAY_TIMEOUT_S, diagnose=lambda: host.journal(GATEWAY_UNIT),
    )  # fmt: skip
    say(f"phi3 answered through the gateway {time.monotonic() - killed_at:.1f} s after the SIGKILL")


def _refused(host: Host) -> bool:
    """Is a connection to the gateway's port refused inside the host (curl's exit code 7)?"""
    probe = ("curl", "--silent", "--max-time", "2", "--output", "/dev/null", f"http://127.0.0.1:{GATEWAY_PORT}/health")
    return host.run(*probe, check=False).returncode == 7


def test_stopping_the_gateway_drains_the_stream_in_flight(host: Host) -> None:
    # The demo model has random weights: ban its end-of-sequence token, so the answer runs to max_tokens.
    eos = json.loads(host.read("/var/cache/citadel/demo-chat/config.json"))["eos_token_id"]
    request_id = f"systemd-drain-{uuid.uuid4().hex[:12]}"
    body = {
        "model": "phi3",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": DRAIN_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logit_bias": {str(eos): -100},
    }
    events: list[str] = []
    outcome: dict[str, Any] = {}
    flowing = threading.Event()

    def consume() -> None:
        headers = {**ADMIN, "X-Request-ID": request_id}
        try:
            with httpx.stream("POST", f"{host.url}/v1/chat/completions", json=body, headers=headers, timeout=120) as r:
                outcome["status"] = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line.removeprefix("data: "))
                        if len(events) == 5:
                            flowing.set()
        except httpx.HTTPError as exc:
            outcome["error"] = repr(exc)
        finally:
            outcome["ended"] = time.monotonic()
            flowing.set()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    assert flowing.wait(timeout=120) and "ended" not in outcome, outcome

    stop_started = time.monotonic()
    say(f"systemctl stop {GATEWAY_UNIT} with a stream in flight ({len(events)} events so far)")
    stop = subprocess.Popen(
        ["docker", "exec", host.name, "systemctl", "stop", GATEWAY_UNIT],
        env=host.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    # New connections are refused at once, while the stream goes on: nothing listens on the gateway's port in
    # the host any more, and through the published port no request gets an answer.
    wait_until("the gateway to refuse new connections", lambda: _refused(host), timeout_s=10, interval_s=0.2)
    assert reader.is_alive(), f"the stream ended before the listener closed: {outcome}"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{host.url}/health", timeout=5)
    output, _ = stop.communicate(timeout=120)
    stopped_s = time.monotonic() - stop_started
    assert stop.returncode == 0, output
    reader.join(timeout=60)
    say(
        f"{GATEWAY_UNIT} stopped {stopped_s:.1f} s after `systemctl stop`; the stream's last event arrived "
        f"{outcome['ended'] - stop_started:.1f} s after it began"
    )

    # The stream completed: every chunk up to max_tokens, its usage, then [DONE].
    assert outcome.get("status") == 200 and "error" not in outcome, outcome
    assert events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == DRAIN_TOKENS, chunks[-1]
    reasons = [choice["finish_reason"] for chunk in chunks for choice in chunk["choices"] if choice["finish_reason"]]
    assert reasons == ["length"], reasons
    # A clean stop: uvicorn's exit by SIGTERM counts as success for systemd.
    state = host.show(GATEWAY_UNIT, "ActiveState", "Result")
    assert state == {"ActiveState": "inactive", "Result": "success"}, (state, host.journal(GATEWAY_UNIT))
    # The stream's audit row was flushed to PostgreSQL before the gateway exited.
    row = host.psql(
        "SELECT status, endpoint, model, completion_tokens FROM llm.audit_log "
        f"WHERE kind = 'api' AND request_id = '{request_id}'"
    )
    assert row == f"200|/v1/chat/completions|phi3|{DRAIN_TOKENS}", row

    # And it comes back: the migrate finds the schema current, the gateway serves again.
    host.run("systemctl", "start", GATEWAY_UNIT)
    wait_until(
        f"{GATEWAY_UNIT} to serve again after `systemctl start`",
        lambda: _phi3_in_rotation(host),
        timeout_s=GATEWAY_TIMEOUT_S, diagnose=lambda: host.journal(GATEWAY_UNIT),
    )  # fmt: skip
    assert "(unchanged)" in host.journal(GATEWAY_UNIT, lines=40)
    assert chat(host).status_code == 200
