"""Spool: a bounded on-disk queue of audit records (append-only JSON-lines segments) for PostgreSQL outages."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path

from gateway.audit.record import AuditRecord

log = logging.getLogger(__name__)

_SEGMENT = re.compile(r"^(\d{12})\.jsonl$")
DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024


class SpoolBusy(RuntimeError):
    """Another process holds this spool folder: two writers would interleave their segments."""


class Spool:
    """Segments named by a rising number, appended and fsynced a batch at a time, read back oldest first.

    Not thread-safe: one caller at a time (the audit writer runs every call on one worker thread).
    Records that do not fit under max_bytes are dropped and counted, never raised.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        drop_log_interval_s: float = 60.0,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        # Several segments under the bound, so replayed ones free space while the spool is still in use.
        self.segment_bytes = max(1, min(segment_bytes, max_bytes // 4))
        self.drops = DropLog("audit spool full or failing", interval_s=drop_log_interval_s)
        self.unwritable = DropLog("audit records with values JSON cannot hold", interval_s=drop_log_interval_s)
        self.corrupt_lines = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock(self.directory / ".lock")
        self._sizes = self._scan()
        # Never append to a segment of an earlier run: its last line may be cut short by a crash.
        self._next_seq = max(self._sizes, default=0) + 1
        self._open_seq: int | None = None
        self._open_fd: int | None = None

    @property
    def dropped(self) -> int:
        return self.drops.count + self.unwritable.count

    @property
    def pending_bytes(self) -> int:
        """Bytes of records on disk not yet removed (sealed and open segments)."""
        return sum(self._sizes.values())

    @property
    def is_empty(self) -> bool:
        return not self._sizes

    # Writing

    def append(self, records: Iterable[AuditRecord]) -> int:
        """Append records in order and fsync once; returns how many were kept (the rest are counted drops)."""
        budget = self.max_bytes - self.pending_bytes
        lines: list[bytes] = []
        dropped = 0
        for record in records:
            try:
                line = record.to_line()
            except TypeError:  # a field of a type JSON cannot hold: that record alone is lost
                self.unwritable.add()
                continue
            if len(line) <= budget:
                lines.append(line)
                budget -= len(line)
            else:
                dropped += 1
        data = b"".join(lines)
        written = self._write(data) if lines else 0
        if written < len(data):
            # The disk failed part way: the lines written whole are on disk (they will be replayed), the rest lost.
            whole = _whole_lines(lines, written)
            dropped, lines = dropped + len(lines) - whole, lines[:whole]
        if dropped:
            self.drops.add(dropped)
        return len(lines)

    def seal(self) -> None:
        """Close the open segment, so that it can be read back; the next append starts a new one."""
        if self._open_fd is not None:
            os.close(self._open_fd)
        self._open_fd = self._open_seq = None

    def close(self) -> None:
        self.seal()
        os.close(self._lock_fd)

    # Reading back

    def segments(self) -> list[Path]:
        """Sealed segments, oldest first."""
        return [self._path(seq) for seq in sorted(self._sizes) if seq != self._open_seq]

    def read(self, segment: Path) -> list[AuditRecord]:
        """The records of one segment in order; a line cut short by a crash or unreadable is skipped."""
        try:
            data = segment.read_bytes()
        except FileNotFoundError:  # removed by hand: nothing to replay, and nothing to retry forever
            log.warning("audit spool: segment %s vanished", segment.name)
            return []
        records: list[AuditRecord] = []
        bad = 0
        lines = data.split(b"\n")
        # The piece after the last newline is empty, or a line a crash cut short.
        bad += 1 if lines[-1] else 0
        for line in lines[:-1]:
            try:
                records.append(AuditRecord.from_line(line))
            except (ValueError, TypeError):
                bad += 1
        if bad:
            self.corrupt_lines += bad
            log.warning("audit spool: skipped %d unreadable line(s) in segment %s", bad, segment.name)
        return records

    def remove(self, segment: Path) -> None:
        """Forget a segment whose records are safely in PostgreSQL."""
        seq = int(segment.name.split(".")[0])
        if seq == self._open_seq:
            raise ValueError("the open segment cannot be removed; seal() it first")
        segment.unlink(missing_ok=True)
        self._sizes.pop(seq, None)

    # Internals

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:012d}.jsonl"

    def _scan(self) -> dict[int, int]:
        sizes = {}
        for path in self.directory.iterdir():
            if match := _SEGMENT.match(path.name):
                sizes[int(match.group(1))] = path.stat().st_size
        return sizes

    def _write(self, data: bytes) -> int:
        """Write and fsync; returns the bytes written. On a disk error the segment is sealed, so a torn line can
        only end a segment (reading back skips it)."""
        written = 0
        try:
            fd, seq = self._segment_for_append()
            view = memoryview(data)
            while view:
                count = _write_some(fd, view)
                written += count
                view = view[count:]
            self._sizes[seq] += written
            os.fsync(fd)
        except OSError as exc:
            log.error("audit spool: write failed (%s)", errno.errorcode.get(exc.errno or 0, type(exc).__name__))
            self._resync_open_size()
            self.seal()
            return written
        if self._sizes[seq] >= self.segment_bytes:
            self.seal()
        return written

    def _resync_open_size(self) -> None:
        if self._open_seq is not None:
            with contextlib.suppress(OSError):
                self._sizes[self._open_seq] = self._path(self._open_seq).stat().st_size

    def _segment_for_append(self) -> tuple[int, int]:
        if self._open_fd is None or self._open_seq is None:
            seq = self._next_seq
            self._next_seq += 1
            self._open_fd = os.open(self._path(seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._open_seq = seq
            self._sizes[seq] = 0
            # The new name must survive a crash too, not only the bytes written into it.
            _fsync_dir(self.directory)
        return self._open_fd, self._open_seq


class DropLog:
    """A count of dropped records, logged at most once per interval so that a full disk cannot flood the log."""

    def __init__(self, reason: str, *, interval_s: float = 60.0) -> None:
        self.reason = reason
        self.count = 0
        self._interval_s = interval_s
        self._unlogged = 0
        self._logged_at = float("-inf")

    def add(self, count: int = 1) -> None:
        self.count += count
        self._unlogged += count
        now = time.monotonic()
        if now - self._logged_at >= self._interval_s:
            log.warning(
                "%s: dropped %d audit record(s) since the last report, %d in all",
                self.reason,
                self._unlogged,
                self.count,
            )
            self._unlogged = 0
            self._logged_at = now


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolBusy(f"audit spool {path.parent} is in use by another process") from None
    return fd


def _write_some(fd: int, data: memoryview) -> int:
    """One write(2): the bytes it took (a disk that fills part way takes fewer, then fails)."""
    return os.write(fd, data)


def _whole_lines(lines: list[bytes], written: int) -> int:
    """How many of `lines`, written one after another, lie whole within the first `written` bytes."""
    whole, end = 0, 0
    for line in lines:
        end += len(line)
        if end > written:
            break
        whole += 1
    return whole


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
