"""Faults on the running containers, nothing lost: a model container crashed mid-stream (error event, the other
models keep answering, the restart policy brings it back: time to recovery printed), PostgreSQL restarted under
load (one audit row per request), Redis paused (requests still succeed), and `docker compose down` then `up`
(keys, audit rows and sessions still there). Runs after every other test of this folder (conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from services.containers.progress import say
from tests.containers import stack as stacks
from tests.containers.compose_stack.conftest import Stack
from tests.support.catalogs import ADMIN_KEY

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
RECOVERY_LIMIT_S = 300  # the requirement: recovery in under 5 minutes


def docker(stack: Stack, *args: str, timeout_s: float = 120) -> str:
    result = subprocess.run(
        ["docker", *args], env=stack.env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result.stdout


def container_id(stack: Stack, service: str) -> str:
    return str(stack.compose.get_container(service).ID)


def crash(stack: Stack, service: str) -> None:
    """SIGKILL the container's main process from the host, as the kernel's OOM killer or a crash would end it.

    Not `docker kill`: Docker counts that as a manual stop, after which no restart policy restarts the container
    (measured here: `docker kill` left vllm-mixtral exited with 137 and never restarted).
    """
    pid = json.loads(docker(stack, "inspect", container_id(stack, service)))[0]["State"]["Pid"]
    assert pid > 0
    os.kill(pid, signal.SIGKILL)


def chat(url: str, model: str, headers: dict[str, str] = ADMIN, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 4, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)


def new_key(url: str, name: str, **fields: Any) -> tuple[str, str]:
    created = httpx.post(f"{url}/admin/keys", json={"name": name, "role": "user", **fields}, headers=ADMIN, timeout=30)
    assert created.status_code == 201, created.text
    return created.json()["id"], created.json()["key"]


def audit_rows(stack: Stack, key_id: str) -> int:
    """The key's rows in llm.audit_log, read in the postgres container (not through the gateway)."""
    values = stack.config.values
    out = docker(
        stack, "exec", container_id(stack, "postgres"), "psql", "-U", values["POSTGRES_USER"], "-d",
        values["POSTGRES_DB"], "-Atc", f"select count(*) from llm.audit_log where key_id = '{key_id}'",
    )  # fmt: skip
    return int(out.strip())


def wait_for_audit(stack: Stack, key_id: str, expected: int, timeout_s: float = 90) -> int:
    """Rows are written in batches after the answers (and replayed from the spool after an outage)."""
    deadline = time.monotonic() + timeout_s
    found = -1
    while time.monotonic() < deadline:
        try:
            found = audit_rows(stack, key_id)
        except AssertionError:  # the database may still be starting
            found = -1
        if found >= expected:
            return found
        time.sleep(1)
    return found


@contextmanager
def background_load(url: str, headers: dict[str, str], body: dict[str, Any]) -> Iterator[list[int]]:
    """Requests one after another from a thread until the block ends; their statuses (599: no answer)."""
    statuses: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            while not stop.is_set():
                try:
                    statuses.append(http.post("/v1/chat/completions", json=body).status_code)
                except httpx.HTTPError:
                    statuses.append(599)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(timeout=120)


def long_answer_settings(url: str) -> dict[str, Any]:
    """Greedy settings under which the demo model writes until max_tokens (it makes noise, and may stop early)."""
    for prompt in ("Tell me a long story.", "Count to a thousand.", "Write an essay.", "List many colours."):
        body = {"model": "mixtral", "messages": [{"role": "user", "content": prompt}], "temperature": 0}
        probe = httpx.post(
            f"{url}/v1/chat/completions", json={**body, "max_tokens": 600}, headers=ADMIN, timeout=300
        ).json()
        if probe["choices"][0]["finish_reason"] == "length":
            return body
    pytest.fail("the demo model stopped early for every prompt tried")


def test_a_model_container_killed_mid_stream_ends_the_stream_and_comes_back(stack: Stack, gateway_url: str) -> None:
    body = {**long_answer_settings(gateway_url), "max_tokens": 1200, "stream": True}
    killed_at = 0.0
    events: list[str] = []
    headers = {**ADMIN, "Cache-Control": "no-cache, no-store"}
    with httpx.stream("POST", f"{gateway_url}/v1/chat/completions", json=body, headers=headers, timeout=300) as s:
        assert s.status_code == 200
        for line in s.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[6:])
            if len(events) == 5:
                crash(stack, "vllm-mixtral")
                killed_at = time.monotonic()
                say("vllm-mixtral killed (SIGKILL of its main process) after 5 stream events")
    assert killed_at, "the stream ended before the kill"
    assert events[-1] == "[DONE]", events[-3:]
    error = json.loads(events[-2])
    assert "error" in error, events[-3:]
    # Meanwhile the other models answer.
    for model in ("phi3", "hermes", "embed"):
        if model == "embed":
            response = httpx.post(
                f"{gateway_url}/v1/embeddings",
                json={"model": "embed", "input": "still here"},
                headers=ADMIN,
                timeout=60,
            )
        else:
            response = chat(gateway_url, model)
        assert response.status_code == 200, (model, response.text)
    # The restart policy (unless-stopped) starts the container again; the gateway's probes route to it again.
    deadline = killed_at + RECOVERY_LIMIT_S
    while time.monotonic() < deadline:
        if chat(gateway_url, "mixtral").status_code == 200:
            break
        time.sleep(2)
    recovered_after = time.monotonic() - killed_at
    restarts = json.loads(docker(stack, "inspect", container_id(stack, "vllm-mixtral")))[0]["RestartCount"]
    say(f"vllm-mixtral: answering through the gateway {recovered_after:.0f} s after the crash (restarts: {restarts})")
    assert recovered_after < RECOVERY_LIMIT_S, f"mixtral not back within {RECOVERY_LIMIT_S} s"
    assert restarts >= 1


def test_postgres_restarted_under_load_loses_no_audit_row(stack: Stack, gateway_url: str) -> None:
    # Limits far above the load: every request should be answered, none refused.
    key_id, key = new_key(gateway_url, f"faults-pg-{uuid.uuid4().hex[:6]}", requests_per_minute=100_000)
    body = {"model": "phi3", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    with background_load(gateway_url, {"Authorization": f"Bearer {key}"}, body) as statuses:
        time.sleep(3)
        before = len(statuses)
        started = time.monotonic()
        docker(stack, "restart", container_id(stack, "postgres"))
        say(f"postgres restarted in {time.monotonic() - started:.1f} s with {before} requests before it")
        time.sleep(5)
    sent = len(statuses)
    assert sent > before > 0, statuses
    found = wait_for_audit(stack, key_id, sent)
    say(f"postgres restart: {sent} requests sent ({statuses.count(200)} answered 200), {found} audit rows")
    assert found == sent, f"{sent} requests but {found} audit rows"
    # Keys are served from the gateway's cache while the database is away: every request is answered.
    assert set(statuses) == {200}, {status: statuses.count(status) for status in set(statuses)}


def test_paused_redis_does_not_stop_requests(stack: Stack, gateway_url: str) -> None:
    _, key = new_key(gateway_url, f"faults-redis-{uuid.uuid4().hex[:6]}")
    headers = {"Authorization": f"Bearer {key}"}
    redis = container_id(stack, "redis")
    docker(stack, "pause", redis)
    try:
        statuses = [chat(gateway_url, "phi3", headers, temperature=0.7).status_code for _ in range(10)]
    finally:
        docker(stack, "unpause", redis)
    assert statuses == [200] * 10, statuses


def test_compose_down_then_up_keeps_keys_audit_rows_and_sessions(stack: Stack, gateway_url: str) -> None:
    key_id, key = new_key(gateway_url, f"faults-durable-{uuid.uuid4().hex[:6]}")
    headers = {"Authorization": f"Bearer {key}"}
    session_id = str(uuid.uuid4())
    answered = chat(gateway_url, "phi3", {**headers, "X-Session-ID": session_id})
    assert answered.status_code == 200, answered.text
    rows = wait_for_audit(stack, key_id, 1)
    assert rows >= 1
    started = time.monotonic()
    stacks.run(stack.config, "down", env=stack.env, timeout_s=600)
    # The gateway and what it depends on (PostgreSQL, Redis, migrate); the model servers are not needed here.
    stacks.run(stack.config, "up", "--detach", "--wait", "gateway", env=stack.env, timeout_s=900)
    say(f"docker compose down, then up of the gateway and its dependencies: {time.monotonic() - started:.0f} s")
    models = httpx.get(f"{gateway_url}/v1/models", headers=headers, timeout=30)
    assert models.status_code == 200, "the key did not survive down/up"
    stored = httpx.get(f"{gateway_url}/v1/sessions/{session_id}", headers=headers, timeout=30)
    assert stored.status_code == 200, stored.text
    assert [m["role"] for m in stored.json()["messages"]][:2] == ["user", "assistant"]
    # The rows written before `down` are all there, and the two requests since `up` were audited too.
    assert wait_for_audit(stack, key_id, rows + 2) == rows + 2
