"""When an outreach was withdrawn before it was sent (campaigns' OutreachWithdrawn): its send and cost are taken back,
and last touch, lift and a fixed cost's shares leave it out.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outreaches", sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outreaches") as batch:
        batch.drop_column("withdrawn_at")
