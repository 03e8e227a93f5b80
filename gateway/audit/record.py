"""AuditRecord: one audit row as the gateway makes it, its spool line and its database row."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, Literal

import orjson

# The audit_log columns the writer fills, in the order of a spool line and of a database row
# (`id` is the table's own identity).
COLUMNS: tuple[str, ...] = (
    "event_id",
    "occurred_at",
    "kind",
    "request_id",
    "key_id",
    "role",
    "method",
    "endpoint",
    "model",
    "status",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "cache_hit",
    "error_type",
    "client_addr",
    "action",
    "target",
)

# A spool line is a JSON array led by this version, so a later column change can still read old spools.
LINE_VERSION = 1

_values = attrgetter(*COLUMNS)


def _json_default(value: Any) -> Any:
    """What orjson leaves out: subclasses of UUID, such as the asyncpg UUID of a key id read from the database."""
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not an audit column type")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True, kw_only=True)
class AuditRecord:
    """One API request (kind 'api') or admin action (kind 'admin'); event_id makes replays idempotent."""

    kind: Literal["api", "admin"]
    method: str
    endpoint: str
    status: int
    latency_ms: float
    request_id: str | None = None
    key_id: uuid.UUID | None = None
    role: str | None = None
    model: str | None = None
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cache_hit: bool = False
    error_type: str | None = None
    client_addr: str | None = None
    action: str | None = None
    target: str | None = None
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    occurred_at: datetime = field(default_factory=_utcnow)

    def values(self) -> tuple[Any, ...]:
        """The column values in COLUMNS order (a database row; strings are cut to width by the INSERT). A NUL
        character, which PostgreSQL text cannot hold and which would fail the whole batch's COPY, becomes U+FFFD:
        a request whose path or model name carries one is still audited, visibly marked."""
        row: tuple[Any, ...] = _values(self)
        if any(type(value) is str and "\x00" in value for value in row):
            return tuple(value.replace("\x00", "\ufffd") if type(value) is str else value for value in row)
        return row

    def to_line(self) -> bytes:
        """The compact spool form: one JSON array and a newline."""
        return orjson.dumps([LINE_VERSION, *self.values()], default=_json_default) + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> AuditRecord:
        """Parse a line made by to_line; ValueError (or a subclass) if it is not one."""
        data = orjson.loads(line)
        if not isinstance(data, list) or len(data) != len(COLUMNS) + 1 or data[0] != LINE_VERSION:
            raise ValueError("not an audit spool line")
        fields = dict(zip(COLUMNS, data[1:], strict=True))
        fields["event_id"] = uuid.UUID(fields["event_id"])
        fields["occurred_at"] = datetime.fromisoformat(fields["occurred_at"])
        if fields["key_id"] is not None:
            fields["key_id"] = uuid.UUID(fields["key_id"])
        return cls(**fields)
