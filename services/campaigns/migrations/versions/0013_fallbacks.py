"""Fallbacks: an outreach that failed or bounced is followed by one on a later channel (fallback_on_failure).

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from plumbing.migrations import create_partial_index

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FALLBACKS_ONLY = "fallback_of IS NOT NULL"
FALLBACK_PENDING = "fallback_due_at IS NOT NULL AND fallback_state IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("outreaches") as batch:
        batch.add_column(sa.Column("fallback_of", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("fallback_state", sa.String(length=60), nullable=True))
        batch.add_column(sa.Column("fallback_due_at", sa.DateTime(timezone=True), nullable=True))
    create_partial_index("uq_outreaches_fallback_of", "outreaches", ["fallback_of"], FALLBACKS_ONLY, unique=True)
    create_partial_index(
        "ix_outreaches_fallback_pending", "outreaches", ["campaign_key", "fallback_due_at"], FALLBACK_PENDING
    )


def downgrade() -> None:
    op.drop_index("ix_outreaches_fallback_pending", table_name="outreaches")
    op.drop_index("uq_outreaches_fallback_of", table_name="outreaches")
    with op.batch_alter_table("outreaches") as batch:
        batch.drop_column("fallback_due_at")
        batch.drop_column("fallback_state")
        batch.drop_column("fallback_of")
