"""Structured logs: one JSON line per request with its id, key name, model and status; the id on every line
written while serving it; never the key's secret, never the prompt unless payload logging is on."""

from __future__ import annotations

import io
import logging
import logging.config
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.app import create_app
from gateway.observability.logs import REQUEST_ID, JsonFormatter, RequestIdFilter, TextFormatter, log_config
from tests.conftest import make_settings
from tests.support.catalogs import ADMIN_KEY, chat_entry, write_models_file

PROMPT = "my-secret-prompt-text-4f1c"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every log record of the process, formatted as `citadel serve` formats them (JSON)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def send_chat(tmp_path: Path, request_id: str, **settings: Any) -> None:
    # The model server is a closed port: the request fails upstream and logs a warning while being served.
    models = write_models_file(tmp_path / "models.yaml", {"m": chat_entry("http://127.0.0.1:9")})
    app = create_app(make_settings(models, **settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            headers = {"Authorization": f"Bearer {ADMIN_KEY}", "X-Request-ID": request_id}
            body = {"model": "m", "messages": [{"role": "user", "content": PROMPT}]}
            response = await client.post("/v1/chat/completions", json=body, headers=headers)
            assert response.status_code >= 500  # answered, in the OpenAI shape
            assert "error" in response.json()


async def test_request_lines_carry_the_id_and_no_key_or_prompt(tmp_path: Path, captured: io.StringIO) -> None:
    await send_chat(tmp_path, "req-log-1")
    text = captured.getvalue()
    assert ADMIN_KEY not in text and PROMPT not in text
    mine = [entry for entry in lines(captured) if entry.get("request_id") == "req-log-1"]
    (request_line,) = [entry for entry in mine if entry["logger"] == "gateway.requests"]
    assert request_line["key"] == "bootstrap-admin"  # the key's name
    assert request_line["model"] == "m" and request_line["status"] >= 500
    assert request_line["path"] == "/v1/chat/completions" and request_line["latency_ms"] > 0
    assert {"prompt_tokens", "completion_tokens", "cache_hit", "retries"} <= set(request_line)
    # The upstream failure's warning, written while serving the request, carries the id too.
    assert len(mine) >= 2, mine
    assert REQUEST_ID.get() is None  # reset once the request is over


async def test_payloads_are_logged_only_when_asked(tmp_path: Path, captured: io.StringIO) -> None:
    await send_chat(tmp_path, "req-log-2", log_payloads=True)
    (request_line,) = [e for e in lines(captured) if e["logger"] == "gateway.requests"]
    assert PROMPT in request_line["request_body"] and "error" in request_line["response_body"]
    assert ADMIN_KEY not in captured.getvalue()  # headers are never logged


def test_log_config_sets_up_json_or_text(capsys: pytest.CaptureFixture[str]) -> None:
    saved = logging.getLogger().handlers[:], logging.getLogger().level
    try:
        for fmt in ("json", "text"):
            logging.config.dictConfig(log_config(level="info", fmt=fmt))
            token = REQUEST_ID.set("rid-9")
            logging.getLogger("uvicorn.error").info("hello %s", "there")
            REQUEST_ID.reset(token)
            err = capsys.readouterr().err.strip().splitlines()[-1]
            if fmt == "json":
                entry = orjson.loads(err)
                assert entry["message"] == "hello there" and entry["request_id"] == "rid-9"
                assert entry["level"] == "info" and entry["logger"] == "uvicorn.error"
            else:
                assert "[rid-9] hello there" in err
    finally:
        root = logging.getLogger()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_text_format_shows_the_request_fields() -> None:
    record = logging.LogRecord("gateway.requests", logging.INFO, __file__, 1, "request", None, None)
    record.fields = {"status": 200, "model": "m"}
    record.request_id = "r1"
    assert TextFormatter().format(record).endswith("[r1] request status=200 model=m")
