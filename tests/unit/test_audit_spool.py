"""The audit spool on its own, in a temporary folder: order, the size bound, torn lines, restarts."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.audit.record import COLUMNS, AuditRecord
from gateway.audit.spool import Spool, SpoolBusy


def make(n: int, **fields: Any) -> list[AuditRecord]:
    base: dict[str, Any] = {"kind": "api", "method": "POST", "endpoint": "/v1/chat/completions", "status": 200}
    return [AuditRecord(**{**base, "latency_ms": float(i), **fields}) for i in range(n)]


def drain(spool: Spool) -> list[AuditRecord]:
    """Everything spooled, oldest first, removing each segment as a replay does."""
    spool.seal()
    out: list[AuditRecord] = []
    for segment in spool.segments():
        out += spool.read(segment)
        spool.remove(segment)
    return out


def test_line_round_trip_keeps_every_field() -> None:
    rec = AuditRecord(
        kind="admin",
        method="DELETE",
        endpoint="/admin/keys/{key_id}",
        status=204,
        latency_ms=1.25,
        request_id="req-1",
        key_id=uuid.uuid4(),
        role="admin",
        model=None,
        ttft_ms=None,
        prompt_tokens=3,
        completion_tokens=4,
        cache_hit=True,
        error_type=None,
        client_addr="10.0.0.1",
        action="revoke_key",
        target="key:1234",
    )
    line = rec.to_line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert AuditRecord.from_line(line.rstrip(b"\n")) == rec


def test_uuid_from_the_database_driver_round_trips() -> None:
    """Key ids read through asyncpg are its own UUID subclass, which orjson does not serialise by itself."""
    key_id = asyncpg.pgproto.pgproto.UUID(str(uuid.uuid4()))
    rec = make(1, key_id=key_id)[0]
    assert AuditRecord.from_line(rec.to_line()).key_id == uuid.UUID(str(key_id))


def test_values_follow_columns() -> None:
    rec = make(1, request_id="r", model="m")[0]
    row = dict(zip(COLUMNS, rec.values(), strict=True))
    assert row["request_id"] == "r" and row["model"] == "m" and row["event_id"] == rec.event_id


def test_order_kept_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=2_000)
    records = make(300)
    for start in range(0, 300, 7):
        assert spool.append(records[start : start + 7]) == len(records[start : start + 7])
    spool.seal()
    assert len(spool.segments()) > 5
    assert [r.event_id for r in drain(spool)] == [r.event_id for r in records]
    assert spool.is_empty and spool.pending_bytes == 0


def test_order_kept_across_restarts(tmp_path: Path) -> None:
    first, second = make(50), make(50)
    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.append(first)
    spool.close()  # the process ends with its segment still open

    spool = Spool(tmp_path, max_bytes=10_000_000)
    assert not spool.is_empty
    spool.append(second)  # a new run appends behind the old rows, never into the old segment
    assert [r.event_id for r in drain(spool)] == [r.event_id for r in first + second]
    spool.close()

    assert Spool(tmp_path, max_bytes=10_000_000).is_empty


def test_bound_respected_and_drops_counted(tmp_path: Path) -> None:
    line_bytes = len(make(1)[0].to_line())
    spool = Spool(tmp_path, max_bytes=line_bytes * 10 + line_bytes // 2, drop_log_interval_s=3600)
    records = make(25)
    assert spool.append(records[:4]) == 4
    assert spool.append(records[4:25]) == 6  # room for six more, the newest fifteen are dropped
    assert spool.dropped == 15
    assert spool.pending_bytes <= spool.max_bytes
    assert spool.append(make(3)) == 0 and spool.dropped == 18

    # Replayed segments free their space again.
    assert [r.event_id for r in drain(spool)] == [r.event_id for r in records[:10]]
    assert spool.append(make(3)) == 3


def test_record_json_cannot_hold_is_dropped_alone(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000_000)
    good = make(2)
    assert spool.append([good[0], make(1, target=object())[0], good[1]]) == 2
    assert spool.dropped == 1
    assert [r.event_id for r in drain(spool)] == [r.event_id for r in good]


def test_drops_logged_once_per_interval(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path, max_bytes=10, drop_log_interval_s=3600)
    for _ in range(20):
        spool.append(make(2))
    assert spool.dropped == 40
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 1


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    records = make(10)
    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.append(records)
    spool.close()
    # A crash in the middle of a write leaves half a line at the end of the segment.
    segment = next(tmp_path.glob("*.jsonl"))
    with segment.open("ab") as f:
        f.write(make(1)[0].to_line()[:40])

    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.append(make(1))
    replayed = drain(spool)
    assert [r.event_id for r in replayed[:10]] == [r.event_id for r in records]
    assert len(replayed) == 11
    assert spool.corrupt_lines == 1


def test_garbage_line_in_the_middle_is_skipped(tmp_path: Path) -> None:
    records = make(3)
    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.append(records[:1])
    spool.close()
    segment = next(tmp_path.glob("*.jsonl"))
    with segment.open("ab") as f:
        f.write(b'{"not": "a record"}\n\x00\x00garbage\n')
        f.write(records[1].to_line() + records[2].to_line())
    spool = Spool(tmp_path, max_bytes=10_000_000)
    assert [r.event_id for r in drain(spool)] == [r.event_id for r in records]
    assert spool.corrupt_lines == 2


def test_one_process_per_folder(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000)
    with pytest.raises(SpoolBusy):
        Spool(tmp_path, max_bytes=1000)
    spool.close()
    Spool(tmp_path, max_bytes=1000).close()


def test_open_segment_is_not_listed_or_removable(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.append(make(2))
    assert spool.segments() == []
    with pytest.raises(ValueError):
        spool.remove(next(tmp_path.glob("*.jsonl")))
    spool.seal()
    assert len(spool.segments()) == 1
