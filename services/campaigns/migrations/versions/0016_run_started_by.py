"""What started a run (the LaunchCampaign call's span, as a W3C traceparent): its outreaches' root spans link to it.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30 00:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaign_runs") as batch:
        batch.add_column(sa.Column("started_by", sa.String(length=55), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("campaign_runs") as batch:
        batch.drop_column("started_by")
