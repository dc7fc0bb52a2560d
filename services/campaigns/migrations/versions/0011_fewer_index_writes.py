"""Two indexes cover only the rows their queries read, so creating an outreach and its events writes two fewer:
the outbox's by publication time holds published rows (the prune's), and the unique index on resend_of holds
resends (an original's NULL was an entry of its own in it).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28 12:00:00
"""

from collections.abc import Sequence

from alembic import op

from plumbing.migrations import create_partial_index, outbox_published_index_full, outbox_published_index_partial

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RESENDS_ONLY = "resend_of IS NOT NULL"


def upgrade() -> None:
    outbox_published_index_partial()
    op.drop_index("uq_outreaches_resend_of", table_name="outreaches")
    create_partial_index("uq_outreaches_resend_of", "outreaches", ["resend_of"], RESENDS_ONLY, unique=True)


def downgrade() -> None:
    op.drop_index("uq_outreaches_resend_of", table_name="outreaches")
    op.create_index("uq_outreaches_resend_of", "outreaches", ["resend_of"], unique=True)
    outbox_published_index_full()
