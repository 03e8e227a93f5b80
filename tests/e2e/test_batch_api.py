"""The Batch API on the real stack with the official openai SDK (issue 17 part 6): upload, create, poll, download
for chat and embeddings; cancel mid-run; a malformed input; another key's 404; and a gateway killed (SIGKILL)
mid-batch that the stack's runner restarts, after which every line is answered exactly once.

The crash test kills the session stack's gateway rather than starting a stack of its own (minutes of vLLM start on
2 cores): only the gateway dies, the model servers, PostgreSQL and Redis keep running, and the test returns only
once the restarted gateway answers chat and embeddings again, so the tests after it meet a serving stack. It runs
last in this file.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import psutil
import pytest
from openai.types import Batch

from tests.support.catalogs import ADMIN_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
OVER = ("completed", "failed", "expired", "cancelled")
# The demo model answers a short line in ~0.1-0.5 s; 4 lines run at once (CITADEL_BATCH_CONCURRENCY).
BATCH_TIMEOUT_S = 300
GATEWAY_BACK_TIMEOUT_S = 180


@dataclass(slots=True)
class Keys:
    """Two user keys of their own: the batches' owner and a stranger to them."""

    owner: openai.OpenAI
    stranger: openai.OpenAI


def _user(gateway_url: str, name: str) -> openai.OpenAI:
    created = httpx.post(
        f"{gateway_url}/admin/keys",
        # High limits: a batch spends the key's own budget, and these tests measure the batch, not the limiter.
        json={"name": f"{name}-{uuid.uuid4().hex[:6]}", "role": "user", "requests_per_minute": 100_000},
        headers=ADMIN,
        timeout=30,
    )
    assert created.status_code == 201, created.text
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=created.json()["key"], max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def keys(gateway_url: str) -> Keys:
    return Keys(owner=_user(gateway_url, "e2e-batch-owner"), stranger=_user(gateway_url, "e2e-batch-stranger"))


def chat_line(custom_id: str, model: str, *, max_tokens: int = 8, url: str = CHAT) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Say something about the number {custom_id}."}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
    }
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def submit(client: openai.OpenAI, lines: list[Any], endpoint: str = CHAT) -> Batch:
    uploaded = client.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(lines))
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        metadata={"suite": "e2e"},
    )
    assert batch.status == "validating" and batch.input_file_id == uploaded.id
    return batch


def wait_until(
    client: openai.OpenAI, batch_id: str, done: Callable[[Batch], bool], *, timeout_s: float = BATCH_TIMEOUT_S
) -> Batch:
    """Polls `retrieve` until `done(batch)`; a bounded wait (a stuck batch fails the test, it does not hang it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout_s}s: {batch.request_counts}")
        time.sleep(0.5)


def finished(client: openai.OpenAI, batch_id: str, *, timeout_s: float = BATCH_TIMEOUT_S) -> Batch:
    return wait_until(client, batch_id, lambda batch: batch.status in OVER, timeout_s=timeout_s)


def output_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line]


def by_custom_id(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The output's lines by custom_id, asserting each appears once."""
    found = {line["custom_id"]: line for line in lines}
    assert len(found) == len(lines), "a custom_id appears more than once in the output"
    return found


def test_chat_batch_round_trip_with_the_sdk(keys: Keys) -> None:
    models = {f"chat-{n}": ("phi3", "hermes")[n % 2] for n in range(6)}
    batch = finished(keys.owner, submit(keys.owner, [chat_line(cid, model) for cid, model in models.items()]).id)
    assert batch.status == "completed", batch.errors
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (6, 6, 0)
    assert batch.error_file_id is None and batch.in_progress_at and batch.completed_at
    answers = by_custom_id(output_lines(keys.owner, batch.output_file_id))
    assert set(answers) == set(models)
    for custom_id, line in answers.items():
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == models[custom_id]
        assert 0 < body["usage"]["completion_tokens"] <= 8
    # The output file is the key's own, listed with purpose batch_output.
    output = keys.owner.files.retrieve(batch.output_file_id or "")
    assert output.purpose == "batch_output"
    assert batch.id in [listed.id for listed in keys.owner.batches.list(limit=100)]


def test_embeddings_batch_round_trip_with_the_sdk(keys: Keys) -> None:
    texts = {f"emb-{n}": f"Document number {n} about batch embeddings." for n in range(4)}
    lines = [
        {"custom_id": cid, "method": "POST", "url": EMBEDDINGS, "body": {"model": "embed", "input": text}}
        for cid, text in texts.items()
    ]
    batch = finished(keys.owner, submit(keys.owner, lines, endpoint=EMBEDDINGS).id)
    assert batch.status == "completed", batch.errors
    assert batch.request_counts is not None and batch.request_counts.completed == 4
    answers = by_custom_id(output_lines(keys.owner, batch.output_file_id))
    assert set(answers) == set(texts)
    for line in answers.values():
        body = line["response"]["body"]
        assert line["response"]["status_code"] == 200 and body["model"] == "embed"
        assert len(body["data"][0]["embedding"]) == 384  # the real all-MiniLM-L6-v2


def test_cancel_a_running_batch_keeps_its_partial_output(keys: Keys) -> None:
    lines = [chat_line(f"cancel-{n}", "phi3", max_tokens=64) for n in range(300)]
    batch = submit(keys.owner, lines)
    started = wait_until(
        keys.owner,
        batch.id,
        lambda b: b.status in OVER or (b.request_counts is not None and b.request_counts.completed > 0),
    )
    assert started.status == "in_progress", started.status
    cancelling = keys.owner.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    ended = finished(keys.owner, batch.id, timeout_s=120)
    assert ended.status == "cancelled" and ended.cancelled_at
    counts = ended.request_counts
    assert counts is not None and 0 < counts.completed < counts.total == 300
    answers = by_custom_id(output_lines(keys.owner, ended.output_file_id))
    assert len(answers) == counts.completed and set(answers) <= {line["custom_id"] for line in lines}
    assert keys.owner.batches.cancel(batch.id).status == "cancelled"  # asking again changes nothing


def test_a_line_that_is_not_json_is_refused_at_upload_by_its_number(keys: Keys) -> None:
    data = jsonl([chat_line("ok-1", "phi3"), b'{"custom_id": "broken", "method": ', chat_line("ok-3", "phi3")])
    with pytest.raises(openai.BadRequestError) as caught:
        keys.owner.files.create(file=("bad.jsonl", data), purpose="batch")
    assert "Line 2" in str(caught.value) and "broken" not in str(caught.value)


def test_a_malformed_input_fails_the_batch_naming_each_bad_line(keys: Keys) -> None:
    lines = [
        chat_line("good-1", "phi3"),
        chat_line("wrong-url", "phi3", url="/v1/completions"),
        chat_line("good-3", "phi3"),
        chat_line("no-such-model", "gpt-17"),
        {"custom_id": "good-1", **{k: v for k, v in chat_line("x", "phi3").items() if k != "custom_id"}},
    ]
    batch = finished(keys.owner, submit(keys.owner, lines).id, timeout_s=60)
    assert batch.status == "failed" and batch.failed_at and batch.output_file_id is None
    assert batch.errors is not None and batch.errors.data is not None
    named = {(error.line, error.code) for error in batch.errors.data}
    assert named == {(2, "invalid_url"), (4, "model_not_found"), (5, "duplicate_custom_id")}, named
    assert batch.request_counts is None or batch.request_counts.completed == 0  # no line ran


def test_another_keys_batch_and_files_are_404(keys: Keys) -> None:
    batch = finished(keys.owner, submit(keys.owner, [chat_line("mine-1", "phi3")]).id)
    assert batch.status == "completed" and batch.output_file_id
    for call in (
        lambda: keys.stranger.batches.retrieve(batch.id),
        lambda: keys.stranger.batches.cancel(batch.id),
        lambda: keys.stranger.files.retrieve(batch.input_file_id),
        lambda: keys.stranger.files.content(batch.output_file_id or ""),
        lambda: keys.stranger.batches.create(
            input_file_id=batch.input_file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.id not in [listed.id for listed in keys.stranger.batches.list(limit=100)]
    # The same id exists: its owner still reads it, and may not cancel it once it has ended.
    assert keys.owner.batches.retrieve(batch.id).status == "completed"
    with pytest.raises(openai.BadRequestError):
        keys.owner.batches.cancel(batch.id)


def _gateway_process(gateway_url: str) -> psutil.Process:
    """The stack's gateway: the runner's child (services.stack) that listens on the gateway's port."""
    port = urlsplit(gateway_url).port
    for connection in psutil.net_connections("tcp"):
        if connection.status != psutil.CONN_LISTEN or connection.laddr.port != port or connection.pid is None:
            continue
        process = psutil.Process(connection.pid)
        while (parent := process.parent()) is not None:
            if "services.stack" in parent.cmdline():
                return process
            process = parent
    raise AssertionError(f"no process of the stack listens on {port}")


def _serving(gateway_url: str) -> Iterator[bool]:
    """Chat and embeddings both answer 200 through the gateway (False while it is down or starting)."""
    for path, body in (
        (CHAT, chat_line("probe", "phi3")["body"]),
        (EMBEDDINGS, {"model": "embed", "input": "back again"}),
    ):
        try:
            yield httpx.post(f"{gateway_url}{path}", json=body, headers=ADMIN, timeout=30).status_code == 200
        except httpx.HTTPError:
            yield False


def test_a_gateway_killed_mid_batch_resumes_and_answers_each_line_once(gateway_url: str, keys: Keys) -> None:
    lines = [chat_line(f"crash-{n}", "phi3") for n in range(40)]
    batch = submit(keys.owner, lines)
    gateway = _gateway_process(gateway_url)
    deadline = time.monotonic() + BATCH_TIMEOUT_S
    owner = {"Authorization": f"Bearer {keys.owner.api_key}"}
    with httpx.Client(base_url=gateway_url, headers=owner, timeout=10) as poller:
        # Poll fast: the demo model answers a line in a fraction of a second, 4 at a time.
        while True:
            counts = poller.get(f"/v1/batches/{batch.id}").json()["request_counts"]
            if 0 < counts["completed"] < counts["total"]:
                break
            assert counts["completed"] == 0 and time.monotonic() < deadline, counts
            time.sleep(0.05)
    os.kill(gateway.pid, signal.SIGKILL)
    killed_with = counts["completed"]

    back = time.monotonic() + GATEWAY_BACK_TIMEOUT_S
    while not all(_serving(gateway_url)):
        assert time.monotonic() < back, f"the gateway did not come back within {GATEWAY_BACK_TIMEOUT_S}s"
        time.sleep(1)
    assert _gateway_process(gateway_url).pid != gateway.pid  # the runner started it again

    ended = finished(keys.owner, batch.id)
    assert ended.status == "completed", ended.errors
    assert ended.request_counts is not None
    assert (ended.request_counts.completed, ended.request_counts.failed) == (40, 0)
    output = output_lines(keys.owner, ended.output_file_id)
    assert len(output) == 40  # no line lost, none twice
    answers = by_custom_id(output)
    assert set(answers) == {line["custom_id"] for line in lines}
    assert all(line["response"]["status_code"] == 200 for line in output)
    print(f"\nkilled the gateway with {killed_with}/40 lines done; completed 40/40 after its restart")
