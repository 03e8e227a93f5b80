"""The audit spool's backlog: rows waiting on disk for PostgreSQL, against CITADEL_AUDIT_SPOOL_MAX_MB."""

from __future__ import annotations

import re
from pathlib import Path

from ..settings import Settings
from .findings import Finding, fail, ok, warn
from .services import writable_problem

_SEGMENT = re.compile(r"^\d{12}\.jsonl$")  # gateway/audit/spool.py's segment names


def spool_finding(settings: Settings, *, workdir: Path) -> Finding:
    """Audit rows waiting on disk (PostgreSQL away or not configured) against CITADEL_AUDIT_SPOOL_MAX_MB."""
    folder = settings.audit.spool_dir if settings.audit.spool_dir.is_absolute() else workdir / settings.audit.spool_dir
    problem = writable_problem(folder)
    if problem:
        return fail(
            "audit spool",
            f"{folder} {problem}",
            "make it writable for the gateway's user, or set CITADEL_AUDIT_SPOOL_DIR to a folder that is",
        )
    segments = [path for path in folder.iterdir() if _SEGMENT.match(path.name)] if folder.is_dir() else []
    waiting = sum(path.stat().st_size for path in segments)
    limit = settings.audit.spool_max_mb * 2**20
    if waiting == 0:
        return ok("audit spool", f"{folder}: empty (limit {settings.audit.spool_max_mb} MB)")
    share = waiting / limit
    detail = (
        f"{folder}: {len(segments)} segment(s), {waiting / 2**20:.1f} MB of audit rows wait "
        f"({share:.0%} of CITADEL_AUDIT_SPOOL_MAX_MB={settings.audit.spool_max_mb})"
    )
    if settings.database_url is None:
        fix = "without DATABASE_URL they stay there: set DATABASE_URL; the gateway then writes them to PostgreSQL"
    else:
        fix = "the gateway writes them to PostgreSQL once it reaches it again: see the postgres finding"
    if share >= 0.9:
        return fail("audit spool", f"{detail}: nearly full, new audit rows are dropped", f"{fix}; or raise the limit")
    return warn("audit spool", detail, fix)
