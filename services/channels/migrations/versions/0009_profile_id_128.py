"""A message's profile_id as wide as segments' (128 characters): a person segments admits, with an id of 101 to 128
characters, was refused by channels and never messaged.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 16:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # PostgreSQL widens a varchar without rewriting the table; SQLite copies it (batch), a one-time cost.
    with op.batch_alter_table("messages") as messages:
        messages.alter_column("profile_id", type_=sa.String(128), existing_type=sa.String(100), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("messages") as messages:
        messages.alter_column("profile_id", type_=sa.String(100), existing_type=sa.String(128), existing_nullable=False)
