"""Per-key control-plane limit and vector storage quotas: three nullable columns on llm.api_keys.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

NULL means "the default from settings" (CITADEL_RATE_LIMIT_CONTROL_DEFAULT and the role map,
CITADEL_VECTOR_QUOTA_COLLECTIONS, CITADEL_VECTOR_QUOTA_DOCUMENTS), as for requests_per_minute.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "llm"
COLUMNS = ("control_requests_per_minute", "vector_quota_collections", "vector_quota_documents")


def upgrade() -> None:
    """Add the three columns (nullable: existing keys keep the defaults)."""
    for name in COLUMNS:
        op.add_column("api_keys", sa.Column(name, sa.Integer(), nullable=True), schema=SCHEMA)


def downgrade() -> None:
    """Drop them."""
    for name in reversed(COLUMNS):
        op.drop_column("api_keys", name, schema=SCHEMA)
