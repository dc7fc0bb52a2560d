"""Partial indexes of the outreaches still to dispatch: per run in release order (replacing the index of every
outreach by run and ordinal), and those waiting for the end of quiet hours.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 04:00:00
"""

from collections.abc import Sequence

from alembic import op

from plumbing.migrations import create_partial_index

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNDISPATCHED = "dispatched_at IS NULL AND withdrawn_at IS NULL"
DEFERRED = f"dispatch_after IS NOT NULL AND {UNDISPATCHED}"


def upgrade() -> None:
    create_partial_index("ix_outreaches_run_undispatched", "outreaches", ["run_id", "ordinal"], UNDISPATCHED)
    create_partial_index("ix_outreaches_dispatch_after", "outreaches", ["dispatch_after"], DEFERRED)
    op.drop_index("ix_outreaches_run_ordinal", table_name="outreaches")


def downgrade() -> None:
    op.create_index("ix_outreaches_run_ordinal", "outreaches", ["run_id", "ordinal"])
    op.drop_index("ix_outreaches_dispatch_after", table_name="outreaches")
    op.drop_index("ix_outreaches_run_undispatched", table_name="outreaches")
