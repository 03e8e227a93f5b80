"""The audit spool when the disk misbehaves: a write that fails halfway (disk full) loses only the records of
that batch that did not reach the disk whole, counted and logged, never the rows already on disk, and the spool
goes on writing once space is back; a segment someone deleted by hand is skipped with a warning, not retried
forever."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from gateway.audit import spool as spool_module
from gateway.audit.record import AuditRecord
from gateway.audit.spool import Spool


def records(first: int, n: int) -> list[AuditRecord]:
    return [
        AuditRecord(kind="api", method="POST", endpoint="/v1/chat/completions", status=200, latency_ms=float(i))
        for i in range(first, first + n)
    ]


def read_all(spool: Spool) -> list[float]:
    spool.seal()
    return [rec.latency_ms for segment in spool.segments() for rec in spool.read(segment)]


def test_a_write_that_fails_halfway_loses_only_its_own_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1_000_000)
    assert spool.append(records(0, 3)) == 3

    real_write_some = spool_module._write_some
    calls = 0

    def disk_full_halfway(fd: int, data: memoryview) -> int:
        # The first line and a piece of the second reach the disk, then the disk is full.
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data[: bytes(data).index(b"\n") + 10])

    monkeypatch.setattr(spool_module, "_write_some", disk_full_halfway)
    with caplog.at_level(logging.WARNING, logger="gateway.audit.spool"):
        assert spool.append(records(3, 2)) == 1
    # The line that reached the disk whole is kept (it is replayed); only the torn one is counted lost.
    assert spool.dropped == 1
    assert "ENOSPC" in caplog.text and "dropped 1 audit record(s)" in caplog.text

    monkeypatch.setattr(spool_module, "_write_some", real_write_some)  # space is back
    assert spool.append(records(5, 2)) == 2
    # The rows before and after are all there, in order, and the whole line that made it; the torn one is
    # skipped, not misread, and nothing is appended after it (the segment was sealed).
    assert read_all(spool) == [0.0, 1.0, 2.0, 3.0, 5.0, 6.0]
    assert spool.corrupt_lines == 1
    spool.close()


def test_a_segment_deleted_by_hand_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1_000_000)
    spool.append(records(0, 2))
    spool.seal()
    [segment] = spool.segments()
    segment.unlink()
    with caplog.at_level(logging.WARNING, logger="gateway.audit.spool"):
        assert spool.read(segment) == []
    assert f"segment {segment.name} vanished" in caplog.text
    spool.close()
