"""The happy path through a real gateway process: the official openai SDK, renaming, forwarding rules."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.integration.conftest import Servers
from tests.support.catalogs import ADMIN_KEY

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client(servers: Servers) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{servers.gateway_url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=10)


def test_chat_answers_with_the_requested_model_name(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="ok", messages=MESSAGES)  # type: ignore[arg-type]
    assert answer.model == "ok"
    assert answer.choices[0].message.content == "hello from the fake"
    assert answer.usage is not None and answer.usage.total_tokens == 9


def test_stream_is_relayed_and_renamed(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="ok", messages=MESSAGES, stream=True))  # type: ignore[arg-type]
    assert chunks and all(chunk.model == "ok" for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hello world"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_raw_stream_ends_with_done(servers: Servers) -> None:
    body = {"model": "ok", "messages": MESSAGES, "stream": True}
    with httpx.stream(
        "POST",
        f"{servers.gateway_url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    assert text.endswith("data: [DONE]\n\n")
    assert '"model":"upstream-ok"' not in text


def test_completions_and_embeddings(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="ok", prompt="Say hi", max_tokens=5)
    assert completion.model == "ok"
    embeddings = client.embeddings.create(model="emb", input=["a", "b"])
    assert embeddings.model == "emb"
    assert [len(item.embedding) for item in embeddings.data] == [384, 384]


def test_only_declared_fields_reach_the_upstream_with_defaults(servers: Servers) -> None:
    body = {"model": "ok", "messages": MESSAGES, "guided_json": {"x": 1}, "priority": -100, "max_tokens": 8}
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "X-Request-ID": "trace-42"}
    response = httpx.post(f"{servers.gateway_url}/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200 and response.headers["x-request-id"] == "trace-42"
    seen = httpx.get(f"{servers.upstream_url}/_last").json()
    assert seen["payload"] == {"model": "upstream-ok", "messages": MESSAGES, "max_tokens": 8, "temperature": 0.7}
    assert seen["headers"]["X-Request-ID"] == "trace-42"
    assert "Authorization" not in seen["headers"]
