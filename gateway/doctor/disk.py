"""Free space on each filesystem that holds the cache, the audit spool, the weights or the Hugging Face cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .common import GB
from .findings import Finding, fail, ok, warn

DISK_WARN_GB = 5.0
DISK_FAIL_GB = 1.0


def _existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path.parent != path:
        path = path.parent
    return path


def check_disk(
    places: dict[str, Path], *, warn_gb: float = DISK_WARN_GB, fail_gb: float = DISK_FAIL_GB
) -> list[Finding]:
    """Free space on each filesystem holding one of `places` (label -> folder): warn below `warn_gb`, fail below
    `fail_gb`."""
    by_mount: dict[Path, list[str]] = {}
    for label, path in places.items():
        by_mount.setdefault(_mount_point(_existing(path)), []).append(f"{label} {path}")
    findings = []
    for mount, labels in by_mount.items():
        usage = shutil.disk_usage(mount)
        free = usage.free / GB
        detail = f"{free:.1f} GB free of {usage.total / GB:.1f} GB on {mount}, which holds {'; '.join(labels)}"
        fix = (
            f"free space on {mount} (old logs in .cache/citadel/logs, unused weights, `docker system prune`), or move "
            "these folders to a larger disk (CITADEL_CACHE_DIR, CITADEL_AUDIT_SPOOL_DIR, HF_HOME)"
        )
        check = f"disk {mount}"
        if free < fail_gb:
            findings.append(fail(check, detail, fix))
        elif free < warn_gb:
            findings.append(warn(check, detail, fix))
        else:
            findings.append(ok(check, detail))
    return findings
