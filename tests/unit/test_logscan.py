"""The session's log scan (tests/support/logscan.py): which logs it reads and what it reports. The samples with a
traceback are not named like a gateway's log, or the scan of this very session would report them."""

from __future__ import annotations

from pathlib import Path

from tests.support import logscan

TRACEBACK = """INFO request served
ERROR unhandled error while serving GET /v1/models
Traceback (most recent call last):
  File "gateway/api/openai.py", line 1, in list_models
ValueError: boom
INFO next request
"""


def test_an_unhandled_exception_is_reported_with_the_line_before_it(tmp_path: Path) -> None:
    log = tmp_path / "sample.log"
    log.write_text(TRACEBACK + "ERROR Exception in ASGI application\n")
    found = logscan.offending(log)
    assert len(found) == 2
    assert "2: ERROR unhandled error while serving GET /v1/models" in found[0]
    assert "ValueError: boom" in found[0]


def test_a_clean_or_missing_log_reports_nothing(tmp_path: Path) -> None:
    (tmp_path / "gateway.log").write_text("INFO Application startup complete.\nWARNING slow\n")
    assert logscan.offending(tmp_path / "gateway.log") == []
    assert logscan.offending(tmp_path / "absent.log") == []


def test_gateway_and_stack_logs_anywhere_under_the_temporary_folder_are_scanned(tmp_path: Path) -> None:
    (tmp_path / "a" / "cache" / "logs").mkdir(parents=True)
    wanted = [tmp_path / "a" / "cache" / "logs" / "gateway.log", tmp_path / "a" / "stack.log"]
    for path in [*wanted, tmp_path / "a" / "upstream.log"]:
        path.write_text("")
    assert logscan.logs_to_scan(tmp_path) == sorted(path.resolve() for path in wanted)


def test_an_excluded_log_is_not_scanned(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    log.write_text("")
    logscan.exclude_log(log, "crashed on purpose")
    try:
        assert log.resolve() not in logscan.logs_to_scan(tmp_path)
    finally:
        logscan._excluded.pop(log.resolve())


def test_a_traceback_in_a_json_log_line_is_found(tmp_path: Path) -> None:
    """The gateway's JSON logs (gateway/observability/logs.py) carry the traceback in the line's `exc` field."""
    log = tmp_path / "sample.log"
    log.write_text(
        '{"level":"error","message":"unhandled error","exc":"Traceback (most recent call last):\\n  File"}\n'
    )
    assert len(logscan.offending(log)) == 1
