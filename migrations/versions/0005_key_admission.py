"""A key's admission class and queue weight: two columns on llm.api_keys, each with a CHECK.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

`priority` is the highest class the key's requests may run in ('interactive' or 'batch'; existing keys
become 'interactive', as they behaved before). `queue_weight` is the key's share in the admission queue's
fair ordering; NULL means the role's default (gateway/auth.py ROLE_QUEUE_WEIGHTS), as for the limits.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "llm"


def upgrade() -> None:
    """Add both columns (the server default fills `priority` for existing rows) and their checks."""
    op.add_column(
        "api_keys",
        sa.Column("priority", sa.Text(), server_default="interactive", nullable=False),
        schema=SCHEMA,
    )
    op.add_column("api_keys", sa.Column("queue_weight", sa.Float(), nullable=True), schema=SCHEMA)
    op.create_check_constraint(
        op.f("ck_api_keys_priority"), "api_keys", "priority IN ('interactive', 'batch')", schema=SCHEMA
    )
    op.create_check_constraint(op.f("ck_api_keys_queue_weight"), "api_keys", "queue_weight > 0", schema=SCHEMA)


def downgrade() -> None:
    """Drop the checks, then the columns."""
    op.drop_constraint(op.f("ck_api_keys_queue_weight"), "api_keys", type_="check", schema=SCHEMA)
    op.drop_constraint(op.f("ck_api_keys_priority"), "api_keys", type_="check", schema=SCHEMA)
    op.drop_column("api_keys", "queue_weight", schema=SCHEMA)
    op.drop_column("api_keys", "priority", schema=SCHEMA)
