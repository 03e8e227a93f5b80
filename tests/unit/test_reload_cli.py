"""`citadel reload` against a small local HTTP server standing in for the gateway's POST /admin/reload: what an
operator sees for an applied reload, a refused file, a wrong key, no answer and a bad URL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gateway import cli
from tests.conftest import free_port

ANSWERS: dict[str, tuple[int, dict[str, object]]] = {
    "Bearer good": (200, {"models_added": ["new"], "models_removed": [], "workers_notified": 1}),
    "Bearer alone": (200, {"models_added": [], "models_removed": [], "workers_notified": None}),
    "Bearer invalid": (
        400,
        {"error": {"message": "config/models.yaml: bad entry", "type": "x", "param": None, "code": "invalid_config"}},
    ),
    "Bearer wrong": (
        401,
        {"error": {"message": "Invalid API key.", "type": "authentication_error", "param": None, "code": None}},
    ),
}


class Gateway(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        status, body = ANSWERS.get(self.headers.get("Authorization", ""), (500, {}))
        data = json.dumps(body).encode() if self.path == "/admin/reload" else b"{}"
        self.send_response(status if self.path == "/admin/reload" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def reload(*args: str) -> int:
    return cli.main(["reload", *args])


def test_an_applied_reload_prints_the_summary(gateway_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert reload("--url", gateway_url, "--key", "good") == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["models_added"] == ["new"] and err == ""


def test_without_redis_it_says_only_one_worker_reloaded(gateway_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert reload("--url", gateway_url + "/", "--key", "alone") == 0
    assert "only the worker that answered" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("key", "shown"), [("invalid", "400: config/models.yaml: bad entry"), ("wrong", "401: Invalid API key.")]
)
def test_a_refusal_is_one_line_and_exit_1(
    gateway_url: str, key: str, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert reload("--url", gateway_url, "--key", key) == 1
    assert capsys.readouterr().err.strip() == f"citadel: the gateway answered {shown}"


def test_no_answer_no_key_and_a_bad_url_are_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert reload("--url", f"http://127.0.0.1:{free_port()}", "--key", "good", "--timeout", "2") == 2
    assert "no answer from" in capsys.readouterr().err
    assert reload("--url", "file:///etc/passwd", "--key", "good") == 2
    assert "http:// or https://" in capsys.readouterr().err
    monkeypatch.delenv("CITADEL_ADMIN_KEY", raising=False)
    monkeypatch.chdir("/")  # no .env there
    assert reload("--url", "http://127.0.0.1:9") == 2
    assert "no admin key" in capsys.readouterr().err
