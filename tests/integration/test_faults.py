"""Upstream faults as the client sees them: the right status, an OpenAI error, no internals, no silent ends."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.integration.conftest import Servers
from tests.support.catalogs import ADMIN_KEY

MESSAGES = [{"role": "user", "content": "hi"}]
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def chat(servers: Servers, model: str, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, **extra}
    return httpx.post(f"{servers.gateway_url}/v1/chat/completions", json=body, headers=AUTH, timeout=10)


def error_of(response: httpx.Response) -> dict[str, object]:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


def test_upstream_500_keeps_its_status_without_internals(servers: Servers) -> None:
    response = chat(servers, "fail500")
    assert response.status_code == 500
    assert "Traceback" not in response.text and "/srv/secret" not in response.text
    assert "fail500" in str(error_of(response)["message"])


def test_upstream_400_passes_its_message_with_the_public_name(servers: Servers) -> None:
    response = chat(servers, "bad400-renamed")
    assert response.status_code == 400
    message = str(error_of(response)["message"])
    assert "context is 2048 tokens" in message and "`bad400-renamed`" in message


def test_malformed_upstream_json_is_502(servers: Servers) -> None:
    response = chat(servers, "malformed")
    assert response.status_code == 502
    assert error_of(response)["type"] == "upstream_error"


@pytest.mark.parametrize("stream", [False, True])
def test_refused_connection_is_a_quick_503_naming_the_model(servers: Servers, stream: bool) -> None:
    started = time.monotonic()
    response = chat(servers, "refused", stream=stream)
    assert response.status_code == 503
    message = str(error_of(response)["message"])
    assert "'refused' is unavailable" in message and "127.0.0.1" not in message
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("stream", [False, True])
def test_slow_first_byte_is_504(servers: Servers, stream: bool) -> None:
    # The gateway under test waits 1 s for a byte; the fake waits 3 s.
    started = time.monotonic()
    response = chat(servers, "slow", stream=stream)
    assert response.status_code == 504
    assert error_of(response)["type"] == "timeout"
    assert time.monotonic() - started < 2.5


def test_stream_cut_in_the_middle_ends_with_an_error_the_sdk_raises(servers: Servers) -> None:
    client = openai.OpenAI(base_url=f"{servers.gateway_url}/v1", api_key=ADMIN_KEY, max_retries=0)
    received = []
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(model="cut", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
            received.append(chunk.choices[0].delta.content)
    assert received == ["hello ", "world"]


@pytest.mark.parametrize("model", ["cut", "nodone"])
def test_incomplete_stream_gets_an_error_event_not_a_silent_end(servers: Servers, model: str) -> None:
    response = chat(servers, model, stream=True)
    assert response.status_code == 200
    events = [line for line in response.text.split("\n\n") if line]
    assert '"error"' in events[-2] and events[-1] == "data: [DONE]"
    assert '"content":"world"' in response.text


def test_client_disconnect_cancels_the_upstream_request(servers: Servers) -> None:
    before = httpx.get(f"{servers.upstream_url}/_stats").json()["cancelled_streams"]
    body = {"model": "endless", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", f"{servers.gateway_url}/v1/chat/completions", json=body, headers=AUTH) as response:
        for _ in response.iter_bytes():
            break  # read the first chunk, then hang up
    hung_up = time.time()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        stats = httpx.get(f"{servers.upstream_url}/_stats").json()
        if stats["cancelled_streams"] > before:
            break
        time.sleep(0.05)
    assert stats["cancelled_streams"] == before + 1
    assert stats["last_cancel_at"] - hung_up < 1.0
