"""Member-count deltas: membership refresh appends, the sweeper folds (no hot segment row per batch).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "segment_count_deltas",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("segment_id", sa.String(length=64), nullable=False),
        sa.Column("delta", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_segment_count_deltas_segment", "segment_count_deltas", ["segment_id"])


def downgrade() -> None:
    op.drop_index("ix_segment_count_deltas_segment", table_name="segment_count_deltas")
    op.drop_table("segment_count_deltas")
