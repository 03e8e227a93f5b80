"""Daily usage rollup: llm.usage_daily, API requests and tokens per UTC day, key and model.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

The audit writer keeps it up to date in the transaction that inserts audit rows; this migration fills it
from the audit rows already there, so an upgraded database reports the same usage as before. NULLs are
stored as sentinels so key_id and model can be in the primary key: key_id NULL as the max UUID (the nil
UUID is the bootstrap admin's key id), model NULL as ''. Literal values here on purpose, as in 0001.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "llm"

BACKFILL = """
INSERT INTO llm.usage_daily (day, key_id, model, requests, prompt_tokens, completion_tokens)
SELECT (occurred_at AT TIME ZONE 'UTC')::date,
       COALESCE(key_id, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid),
       COALESCE(model, ''),
       count(*),
       COALESCE(sum(prompt_tokens), 0),
       COALESCE(sum(completion_tokens), 0)
FROM llm.audit_log
WHERE kind = 'api'
GROUP BY 1, 2, 3
"""


def upgrade() -> None:
    """Create usage_daily and fill it from audit_log (in the migration's transaction)."""
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("key_id", sa.Uuid(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "key_id", "model", name=op.f("pk_usage_daily")),
        schema=SCHEMA,
    )
    # Audit rows committed while the backfill reads would be in neither the backfill nor (for an older
    # writer) the rollup: hold inserts off until this transaction commits. Reads go on.
    op.execute("LOCK TABLE llm.audit_log IN SHARE MODE")
    op.execute(BACKFILL)


def downgrade() -> None:
    """Drop usage_daily; audit_log, the source of its numbers, is untouched."""
    op.drop_table("usage_daily", schema=SCHEMA)
