"""When each channel's provider last reported: an AMBIGUOUS message is handed over again only when reports came after
it went ambiguous, so a wrong webhook secret or a long outage never reads as a provider's silence about one message.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 01:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "provider_reports",
        sa.Column("channel", sa.String(40), primary_key=True),
        sa.Column("last_report_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("provider_reports")
