"""The local stack supervises its servers (issue 14): kill -9 of the chat model server, Redis or PostgreSQL under
requests leaves the gateway and the other servers answering; kill -9 of the gateway leaves the model servers
running untouched; the runner starts the dead one again (the seconds
until its requests succeed again, the MTTR, are printed), nothing of the killed process group survives, and
Ctrl-C afterwards leaves no process behind.

It runs its own stack, started as `make run` starts it (as the session stack in conftest.py is): killing
servers under the session stack would disturb the other e2e tests that share it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from services.local_server import group_members
from tests.support.supervised_stack import (
    CHAT,
    EMBED,
    HEADERS,
    SupervisedStack,
    group_of,
    live,
    succeeds,
    supervised_stack,
    until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

# A model server restarts in 1-3 minutes on 2 shared cores; PostgreSQL and Redis in about a second.
RECOVERY_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SupervisedStack]:
    with supervised_stack(tmp_path_factory.mktemp("supervised") / "stack.log") as stack:
        try:
            yield stack
        finally:
            print("MTTR (s): " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in stack.mttr.items()))


def test_killed_chat_model_server_comes_back_while_the_rest_keeps_serving(
    stack: SupervisedStack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack.post("/v1/chat/completions", CHAT).status_code == 200
    leader = stack.pid("vllm-demo-chat")
    group = group_of(leader)
    assert len(group) >= 2, "vLLM's API server runs its engine core in a child process"

    # A few requests in flight when it dies: each must end (an error), none may hang.
    in_flight: list[int | str] = []

    def long_request() -> None:
        try:
            in_flight.append(stack.post("/v1/chat/completions", {**CHAT, "max_tokens": 400}, timeout_s=120).status_code)
        except httpx.HTTPError as exc:
            in_flight.append(type(exc).__name__)

    threads = [threading.Thread(target=long_request) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    os.kill(leader, signal.SIGKILL)
    killed_at = time.monotonic()

    chat_answers: list[tuple[int, str]] = []

    def others_keep_serving() -> None:
        assert stack.post("/v1/embeddings", EMBED).status_code == 200
        assert httpx.get(f"{stack.url}/health", timeout=10).status_code == 200
        answer = stack.post("/v1/chat/completions", CHAT)
        chat_answers.append((answer.status_code, answer.json().get("error", {}).get("code", "")))

    chat_back = until(
        lambda: succeeds(lambda: stack.post("/v1/chat/completions", CHAT)),
        timeout_s=RECOVERY_TIMEOUT_S,
        what="chat",
        meanwhile=others_keep_serving,
    )
    mttr = time.monotonic() - killed_at
    stack.mttr["vllm-demo-chat"] = mttr
    with capsys.disabled():
        print(f"\nMTTR chat model server (kill -9 of its main process to a chat answer): {mttr:.1f}s")
    assert chat_back > 0
    for thread in threads:
        thread.join(timeout=130)
    assert len(in_flight) == 3 and not any(thread.is_alive() for thread in threads)
    # While it was down the gateway said so at once: 503 model_unavailable (the refused connection, then its
    # probes, kept it out of rotation). The first request may be the one that met the refusal.
    failures = [answer for answer in chat_answers if answer[0] != 200]
    assert failures and all(answer == (503, "model_unavailable") for answer in failures[1:]), chat_answers
    assert failures[0][0] in (502, 503), chat_answers
    # Nothing of the killed server survived (its engine core would hold memory and, maybe, the port).
    assert group_members(leader) == [] and not any(live(pid) for pid in group)
    output = stack.log.read_text()
    assert "vllm-demo-chat exited (killed by SIGKILL)" in output and "vllm-demo-chat: restarting in" in output
    assert stack.pid("vllm-demo-chat") != leader and stack.runner.poll() is None


def test_killed_redis_and_postgres_come_back_while_chat_keeps_answering(
    stack: SupervisedStack, capsys: pytest.CaptureFixture[str]
) -> None:
    def chat_answers() -> None:
        assert stack.post("/v1/chat/completions", CHAT).status_code == 200

    def ready(dependency: str) -> bool:
        document = httpx.get(f"{stack.url}/health/ready", timeout=10).json()
        return bool(document["checks"][dependency]["status"] == "healthy")

    # Redis: limits and the cache fail open meanwhile; back once readiness sees it again.
    leader = stack.pid("redis")
    os.kill(leader, signal.SIGKILL)
    redis_back = until(lambda: ready("redis"), timeout_s=60, what="redis", meanwhile=chat_answers)
    assert stack.pid("redis") != leader
    # PostgreSQL: the bootstrap admin key and the audit spool carry chat meanwhile; the admin API needs it.
    leader = stack.pid("postgres")
    backends = group_of(leader)
    os.kill(leader, signal.SIGKILL)
    admin_back = until(
        lambda: succeeds(lambda: httpx.get(f"{stack.url}/admin/keys", headers=HEADERS, timeout=10)),
        timeout_s=60,
        what="the admin API (PostgreSQL)",
        meanwhile=chat_answers,
    )
    assert group_members(leader) == [] and not any(live(pid) for pid in backends)
    stack.mttr |= {"redis": redis_back, "postgres": admin_back}
    with capsys.disabled():
        print(f"\nMTTR redis (kill -9 to readiness healthy): {redis_back:.1f}s")
        print(f"MTTR postgres (kill -9 of the postmaster to GET /admin/keys 200): {admin_back:.1f}s")
    assert "redis exited (killed by SIGKILL)" in stack.log.read_text()


def test_killed_gateway_comes_back_and_the_model_servers_keep_running(
    stack: SupervisedStack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack.post("/v1/chat/completions", CHAT).status_code == 200
    models = {name: stack.pid(name) for name in ("vllm-demo-chat", "vllm-embed")}
    leader = stack.pid("gateway")
    os.kill(leader, signal.SIGKILL)

    def model_servers_keep_answering() -> None:
        # Straight to their ports: nothing of a model server depends on the gateway that fronts it.
        assert stack.model_server_answers("demo-chat") and stack.model_server_answers("embed")

    gateway_back = until(
        lambda: succeeds(lambda: stack.post("/v1/chat/completions", CHAT)),
        timeout_s=180,
        what="the gateway",
        meanwhile=model_servers_keep_answering,
    )
    assert stack.post("/v1/embeddings", EMBED).status_code == 200
    # The same model server processes as before: the gateway's restart neither stopped nor restarted them.
    assert {name: stack.pid(name) for name in models} == models and all(live(pid) for pid in models.values())
    assert stack.pid("gateway") != leader and not live(leader)
    assert "gateway exited (killed by SIGKILL)" in stack.log.read_text()
    stack.mttr["gateway"] = gateway_back
    with capsys.disabled():
        print(f"\nMTTR gateway (kill -9 of the gateway to a chat answer through it): {gateway_back:.1f}s")


def test_ctrl_c_then_leaves_no_process_behind(stack: SupervisedStack) -> None:
    runner = psutil.Process(stack.runner.pid)
    # Every server leads a process group of its own (the watchdog too): everything in them, and below them.
    leaders = runner.children()
    assert len(leaders) >= 6, leaders  # postgres, redis, two model servers, the gateway, the watchdog
    everything = {pid for leader in leaders for pid in group_members(leader.pid)}
    everything |= {child.pid for leader in leaders for child in leader.children(recursive=True)}
    os.kill(stack.runner.pid, signal.SIGINT)
    assert stack.runner.wait(timeout=90) == 0, stack.log.read_text()[-3000:]
    deadline = time.monotonic() + 15  # the watchdog exits just after the runner
    while any(live(pid) for pid in everything) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [psutil.Process(pid).cmdline()[:3] for pid in everything if live(pid)]
    assert not left, f"left behind after Ctrl-C: {left}"
    assert all(group_members(leader.pid) == [] for leader in leaders)
