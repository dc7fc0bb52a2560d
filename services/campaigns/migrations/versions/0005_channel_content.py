"""Content: SMS, WhatsApp, push and webhook templates per campaign, and the per-person channel fallback order.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 00:00:01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("channel_content", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("fallback_channels", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("fallback_channels")
        batch.drop_column("channel_content")
