"""User feedback: llm.feedback (ratings of API requests), and an index to find audit rows by request id.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

Feedback joins audit_log by request_id (not a foreign key: request ids are not unique across keys, and
audit retention must stay free to delete old rows).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "llm"


def upgrade() -> None:
    """Create feedback and index audit_log.request_id."""
    op.create_table(
        "feedback",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("key_id", sa.Uuid(), nullable=True),
        sa.Column("rated_by", sa.Uuid(), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=True),
        sa.Column("rating", sa.String(length=4), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("rated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("rating IN ('up', 'down', '1', '2', '3', '4', '5')", name=op.f("ck_feedback_rating")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.UniqueConstraint("request_id", "rated_by", name=op.f("uq_feedback_request_id_rated_by")),
        schema=SCHEMA,
    )
    op.create_index("ix_feedback_model_rated_at", "feedback", ["model", "rated_at"], unique=False, schema=SCHEMA)
    op.create_index("ix_audit_log_request_id", "audit_log", ["request_id"], unique=False, schema=SCHEMA)


def downgrade() -> None:
    """Drop feedback and the request id index; audit_log's rows are untouched."""
    op.drop_index("ix_audit_log_request_id", table_name="audit_log", schema=SCHEMA)
    op.drop_index("ix_feedback_model_rated_at", table_name="feedback", schema=SCHEMA)
    op.drop_table("feedback", schema=SCHEMA)
