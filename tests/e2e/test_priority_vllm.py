"""Priority classes on the real model servers: the stack starts vLLM with `--scheduling-policy priority`, and both
the chat and the embedding (pooling) server accept the `priority` field the gateway sends (0 interactive, 1 batch)."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from gateway.admission.priority import PRIORITY_HEADER, Priority
from tests.support.catalogs import ADMIN_KEY

Servers = dict[str, tuple[int, list[str]]]

pytestmark = pytest.mark.e2e

CHAT = {"model": "phi3", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 4, "temperature": 0.7}
EMBED = {"model": "embed", "input": ["a request in the batch class"]}


def _model_servers(gateway_url: str) -> Servers:
    """The stack's vLLM servers, {"chat" | "embedding": (port, command line)}: the runner's children, found from
    the process that listens on the gateway's port (the session fixture gives only the gateway's address)."""
    port = urlsplit(gateway_url).port
    listener = next(
        c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    )
    runner = psutil.Process(listener).parent()
    assert runner is not None
    servers = {}
    for child in runner.children():
        command = child.cmdline()
        if "vllm.entrypoints.openai.api_server" in command:
            kind = "embedding" if "pooling" in command else "chat"
            servers[kind] = (int(command[command.index("--port") + 1]), command)
    assert set(servers) == {"chat", "embedding"}, servers
    return servers


@pytest.fixture(scope="module")
def model_servers(gateway_url: str) -> Servers:
    return _model_servers(gateway_url)


def test_every_model_server_runs_with_the_priority_policy(model_servers: Servers) -> None:
    for kind, (_, command) in model_servers.items():
        at = command.index("--scheduling-policy")
        # The last occurrence wins in vLLM's argument parser: the local profile's own args set no other policy.
        assert command[at + 1] == "priority" and command.count("--scheduling-policy") == 1, (kind, command)


@pytest.mark.parametrize("priority", [Priority.INTERACTIVE, Priority.BATCH])
def test_the_chat_server_accepts_each_class(model_servers: Servers, priority: Priority) -> None:
    port, _ = model_servers["chat"]
    for stream in (False, True):
        body = CHAT | {"priority": priority.rank, "stream": stream}
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
        assert ("data: [DONE]" in response.text) if stream else response.json()["choices"]


@pytest.mark.parametrize("priority", [Priority.INTERACTIVE, Priority.BATCH])
def test_the_embedding_server_accepts_each_class(model_servers: Servers, priority: Priority) -> None:
    port, _ = model_servers["embedding"]
    body = EMBED | {"priority": priority.rank}
    response = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["embedding"]) == 384


@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/embeddings", EMBED)])
def test_a_batch_request_through_the_gateway_is_served(gateway_url: str, path: str, body: dict[str, object]) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", PRIORITY_HEADER: Priority.BATCH.value}
    response = httpx.post(f"{gateway_url}{path}", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
