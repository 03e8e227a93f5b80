"""The Batch API's tables (files, file_chunks, batches, batch_lines) as SQLAlchemy models; migration 0006 makes them.

They share `Base` (and so its metadata and naming convention) with gateway/store/models.py: Alembic and the
schema tests see one schema. A file's bytes are rows of `file_chunks` (CHUNK_BYTES each), so every gateway
worker and replica reads the same file and no row holds more than a chunk.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    Uuid,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base

# One row of file_chunks: big enough that a 100 MiB file is 100 rows, small enough to never strain a query.
CHUNK_BYTES = 1024 * 1024

FILE_PURPOSES = ("batch", "batch_output")
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
BATCH_STATUSES = (
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
)
LINE_STATUSES = ("pending", "done", "failed")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _when() -> Any:
    """A lifecycle timestamp: NULL until the batch gets there."""
    return mapped_column(DateTime(timezone=True), nullable=True)


class StoredFile(Base):
    """An uploaded (purpose 'batch') or produced ('batch_output') file; its bytes are in FileChunk rows."""

    __tablename__ = "files"
    __table_args__ = (
        CheckConstraint(_one_of("purpose", FILE_PURPOSES), name="purpose"),
        Index("ix_files_key_id_created_at", "key_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)  # 'file-' + 24 hex
    key_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    purpose: Mapped[str] = mapped_column(Text)
    filename: Mapped[str] = mapped_column(String(256))
    bytes: Mapped[int] = mapped_column(BigInteger)
    lines: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class FileChunk(Base):
    """CHUNK_BYTES of a file (the last one shorter), in order of `seq` from 0; deleted with the file."""

    __tablename__ = "file_chunks"

    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class BatchRecord(Base):
    """A batch: its input file, endpoint, OpenAI lifecycle status with the time it reached each, and counts.

    The column `metadata` is the attribute `metadata_` (declarative classes reserve `metadata`).
    """

    __tablename__ = "batches"
    __table_args__ = (
        CheckConstraint(_one_of("endpoint", BATCH_ENDPOINTS), name="endpoint"),
        CheckConstraint(_one_of("status", BATCH_STATUSES), name="status"),
        Index("ix_batches_status", "status"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)  # 'batch_' + 24 hex
    key_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    endpoint: Mapped[str] = mapped_column(Text)
    input_file_id: Mapped[str] = mapped_column(Text)
    completion_window: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB, nullable=True)
    errors: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    output_file_id: Mapped[str | None] = mapped_column(Text)
    error_file_id: Mapped[str | None] = mapped_column(Text)
    total: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    completed: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    failed: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    in_progress_at: Mapped[datetime | None] = _when()
    finalizing_at: Mapped[datetime | None] = _when()
    completed_at: Mapped[datetime | None] = _when()
    failed_at: Mapped[datetime | None] = _when()
    expired_at: Mapped[datetime | None] = _when()
    cancelling_at: Mapped[datetime | None] = _when()
    cancelled_at: Mapped[datetime | None] = _when()
    expires_at: Mapped[datetime | None] = _when()


class BatchLine(Base):
    """One request of a batch (line `line_no` of its input, from 1) and, once answered, its outcome.

    `response` is {"status_code", "request_id", "body"}; `error` is {"code", "message"}.
    """

    __tablename__ = "batch_lines"
    __table_args__ = (
        CheckConstraint(_one_of("status", LINE_STATUSES), name="status"),
        Index("ix_batch_lines_batch_id_status", "batch_id", "status"),
    )

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    custom_id: Mapped[str] = mapped_column(Text)
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(Text, server_default="pending", default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    finished_at: Mapped[datetime | None] = _when()


# A key's batches, newest first (GET /v1/batches pages); made here because a DESC column needs the class.
Index("ix_batches_key_id_created_at", BatchRecord.key_id, BatchRecord.created_at.desc())
