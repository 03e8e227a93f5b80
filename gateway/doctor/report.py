"""The findings as a table for a terminal (colour only on a TTY, and never with NO_COLOR set) or as JSON."""

from __future__ import annotations

import json
import os
import textwrap
from collections import Counter
from collections.abc import Sequence
from typing import IO

from .findings import STATUSES, Finding, worst

_COLOURS = {"ok": "\033[32m", "warn": "\033[33m", "fail": "\033[31m"}
_RESET = "\033[0m"
_CHECK_WIDTH_MAX = 28


def exit_status(findings: Sequence[Finding]) -> int:
    """0 when nothing failed (warnings allowed), 1 when something did."""
    return 1 if worst(findings) == "fail" else 0


def summary(findings: Sequence[Finding]) -> dict[str, int]:
    counts = Counter(finding.status for finding in findings)
    return {status: counts.get(status, 0) for status in STATUSES}


def use_colour(stream: IO[str]) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def render_json(findings: Sequence[Finding], *, mode: str, target: str) -> str:
    """{mode, target, status, exit_status, summary, findings: [{check, status, detail, fix, latency_ms}]}."""
    document = {
        "mode": mode,
        "target": target,
        "status": worst(findings),
        "exit_status": exit_status(findings),
        "summary": summary(findings),
        "findings": [finding.to_dict() for finding in findings],
    }
    return json.dumps(document, indent=2)


def render_text(findings: Sequence[Finding], *, title: str, colour: bool = False, width: int | None = None) -> str:
    """A table: status, check, latency, detail; the fix under every finding that is not ok.

    `width` wraps details and fixes to that many columns (a terminal's); None keeps each on one line (logs, grep).
    """
    check_width = min(max((len(finding.check) for finding in findings), default=5), _CHECK_WIDTH_MAX)
    indent = 4 + 2 + check_width + 2 + 10 + 2
    lines = [title, "", f"{'':4}  {'CHECK':<{check_width}}  {'LATENCY':>10}  DETAIL"]
    for finding in findings:
        status = f"{finding.status:<4}"
        if colour:
            status = f"{_COLOURS[finding.status]}{status}{_RESET}"
        latency = f"{finding.latency_ms:g} ms" if finding.latency_ms is not None else ""
        check = finding.check if len(finding.check) <= check_width else finding.check[: check_width - 1] + "~"
        head = f"{status}  {check:<{check_width}}  {latency:>10}  "
        lines += _wrapped(finding.detail, head, indent, width)
        if finding.status != "ok" and finding.fix:
            lines += _wrapped(f"fix: {finding.fix}", " " * indent, indent, width)
    counts = summary(findings)
    verdict = worst(findings)
    tail = f"{len(findings)} checks: {counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail"
    outcome = {"ok": "all good", "warn": "working, with warnings", "fail": "something is wrong"}[verdict]
    if colour:
        outcome = f"{_COLOURS[verdict]}{outcome}{_RESET}"
    lines += ["", f"{tail}: {outcome} (exit status {exit_status(findings)})"]
    return "\n".join(lines)


def _wrapped(text: str, first: str, indent: int, width: int | None) -> list[str]:
    if width is None or width <= indent + 20:
        return [first + text]
    pieces = textwrap.wrap(text, width=width - indent, break_long_words=False, break_on_hyphens=False) or [""]
    return [first + pieces[0], *(" " * indent + piece for piece in pieces[1:])]
