"""A pytest plugin (tests/conftest.py): after the whole session, no gateway process that the tests started may have
logged an unhandled exception. The gateway logs one with its traceback ("Traceback (most recent call last)", from
gateway/errors.py's handler of last resort and from any task that dies) or, past every handler, uvicorn's
"Exception in ASGI application"; the client only ever saw a 500 or a cut connection, which a test may not notice.

The logs scanned: every `gateway.log` and `stack.log` under the session's temporary folder (tests/support/gateway.py,
the integration fixtures; the e2e stack's, whose cache folder is elsewhere, is copied there with `keep_log` before
the folder is removed; the containers tier dumps its gateway container's log there), and any file a test passes to
`watch_log`. A test that crashes a gateway on purpose excludes its log with `exclude_log(path, reason)`. Offending
lines are printed with their context and the session fails (exit status 1), even when every test passed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

MARKERS = ("Traceback (most recent call last)", "Exception in ASGI application")
LOG_NAMES = ("gateway.log", "stack.log")
CONTEXT_LINES = 12

_watched: set[Path] = set()
_excluded: dict[Path, str] = {}


def watch_log(path: Path) -> None:
    """Scan this log at the end of the session too (one outside the session's temporary folder)."""
    _watched.add(path.resolve())


def keep_log(path: Path, folder: Path) -> None:
    """Copy a log that is about to be deleted into `folder` (under the session's temporary folder), for the scan."""
    if path.is_file():
        shutil.copyfile(path, folder / path.name)


def exclude_log(path: Path, reason: str) -> None:
    """Do not scan this log: its gateway was made to fail on purpose (`reason` is printed)."""
    _excluded[path.resolve()] = reason


def offending(path: Path) -> list[str]:
    """Each unhandled exception in a log: its first line, numbered, with the line before and those after it."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    found = []
    for number, line in enumerate(lines):
        if any(marker in line for marker in MARKERS):
            start = max(0, number - 1)  # the line before names the request, when the gateway logged it
            excerpt = lines[start : number + CONTEXT_LINES]
            found.append("\n".join(f"  {start + 1 + n:>6}: {text}" for n, text in enumerate(excerpt)))
    return found


def logs_to_scan(basetemp: Path | None) -> list[Path]:
    paths = set(_watched)
    if basetemp is not None and basetemp.is_dir():
        paths |= {path.resolve() for name in LOG_NAMES for path in basetemp.rglob(name)}
    return sorted(path for path in paths if path not in _excluded)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    factory = getattr(session.config, "_tmp_path_factory", None)
    # Only when a test made temporary folders (getbasetemp() would make one).
    basetemp = factory.getbasetemp() if getattr(factory, "_basetemp", None) is not None else None
    reports = {path: found for path in logs_to_scan(basetemp) if (found := offending(path))}
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        for path, reason in sorted(_excluded.items()):
            reporter.write_line(f"log scan: not scanned ({reason}): {path}")
    if not reports:
        return
    if reporter is not None:
        reporter.write_line("")
        reporter.section("unhandled exceptions in the logs of gateways the tests started", sep="=", red=True)
        for path, found in reports.items():
            reporter.write_line(f"{path}: {len(found)}")
            for excerpt in found[:5]:
                reporter.write_line(excerpt)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
