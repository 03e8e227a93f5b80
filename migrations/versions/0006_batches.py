"""The Batch API: llm.files with their bytes in llm.file_chunks, llm.batches and their requests in llm.batch_lines.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

Models in gateway/store/batch_models.py. Chunks and lines go with their file or batch (ON DELETE CASCADE);
a batch names its files by id without a foreign key, so deleting an input file leaves the batch's record.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "llm"

STATUSES = "'validating', 'failed', 'in_progress', 'finalizing', 'completed', 'expired', 'cancelling', 'cancelled'"
ENDPOINTS = "'/v1/chat/completions', '/v1/completions', '/v1/embeddings'"


def _when(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def _count(name: str) -> sa.Column:
    return sa.Column(name, sa.Integer(), server_default="0", nullable=False)


def upgrade() -> None:
    """Create the four tables, their checks and indexes."""
    op.create_table(
        "files",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("key_id", sa.Uuid(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("filename", sa.String(length=256), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("purpose IN ('batch', 'batch_output')", name=op.f("ck_files_purpose")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_files")),
        schema=SCHEMA,
    )
    op.create_index("ix_files_key_id_created_at", "files", ["key_id", "created_at"], unique=False, schema=SCHEMA)
    op.create_table(
        "file_chunks",
        sa.Column("file_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"], [f"{SCHEMA}.files.id"], name=op.f("fk_file_chunks_file_id_files"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("file_id", "seq", name=op.f("pk_file_chunks")),
        schema=SCHEMA,
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("key_id", sa.Uuid(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("input_file_id", sa.Text(), nullable=False),
        sa.Column("completion_window", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("errors", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("output_file_id", sa.Text(), nullable=True),
        sa.Column("error_file_id", sa.Text(), nullable=True),
        _count("total"),
        _count("completed"),
        _count("failed"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        *(
            _when(name)
            for name in (
                "in_progress_at",
                "finalizing_at",
                "completed_at",
                "failed_at",
                "expired_at",
                "cancelling_at",
                "cancelled_at",
                "expires_at",
            )
        ),
        sa.CheckConstraint(f"endpoint IN ({ENDPOINTS})", name=op.f("ck_batches_endpoint")),
        sa.CheckConstraint(f"status IN ({STATUSES})", name=op.f("ck_batches_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_batches_key_id_created_at",
        "batches",
        ["key_id", sa.text("created_at DESC")],
        unique=False,
        schema=SCHEMA,
    )
    op.create_index("ix_batches_status", "batches", ["status"], unique=False, schema=SCHEMA)
    op.create_table(
        "batch_lines",
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.Text(), nullable=False),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        _count("attempts"),
        sa.Column("response", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        _when("finished_at"),
        sa.CheckConstraint("status IN ('pending', 'done', 'failed')", name=op.f("ck_batch_lines_status")),
        sa.ForeignKeyConstraint(
            ["batch_id"], [f"{SCHEMA}.batches.id"], name=op.f("fk_batch_lines_batch_id_batches"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("batch_id", "line_no", name=op.f("pk_batch_lines")),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_batch_lines_batch_id_status", "batch_lines", ["batch_id", "status"], unique=False, schema=SCHEMA
    )


def downgrade() -> None:
    """Drop the four tables (the children first); nothing else of the schema is touched."""
    op.drop_index("ix_batch_lines_batch_id_status", table_name="batch_lines", schema=SCHEMA)
    op.drop_table("batch_lines", schema=SCHEMA)
    op.drop_index("ix_batches_status", table_name="batches", schema=SCHEMA)
    op.drop_index("ix_batches_key_id_created_at", table_name="batches", schema=SCHEMA)
    op.drop_table("batches", schema=SCHEMA)
    op.drop_table("file_chunks", schema=SCHEMA)
    op.drop_index("ix_files_key_id_created_at", table_name="files", schema=SCHEMA)
    op.drop_table("files", schema=SCHEMA)
