"""Why an outreach failed, as channels said it (DeliveryUpdated.reason): ExplainOutreach tells it.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outreaches") as batch:
        batch.add_column(sa.Column("failure_reason", sa.String(length=300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outreaches") as batch:
        batch.drop_column("failure_reason")
