"""Profile ids as wide as segments' (128 characters) in outreaches, holdouts, profile_conversions and conversions: an
outreach to a person whose id has 101 to 128 characters, which segments, campaigns and channels admit, was refused
by PostgreSQL here, retried and dead-lettered, and its leads and LOS events then answered NOT_FOUND.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 21:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("outreaches", "holdouts", "profile_conversions", "conversions")


def _width(old: int, new: int) -> None:
    # PostgreSQL widens a varchar in place, without rewriting the table; SQLite copies each (batch), a one-time cost.
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "profile_id", type_=sa.String(new), existing_type=sa.String(old), existing_nullable=False
            )


def upgrade() -> None:
    _width(100, 128)


def downgrade() -> None:
    _width(128, 100)
