"""Triggers and resends: the trigger inbox, each campaign's automation, run kinds, an outreach's resend link.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 00:00:02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(100), primary_key=True),
        sa.Column("message_id", sa.String(200), primary_key=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("automation", sa.JSON(), nullable=True))
    with op.batch_alter_table("campaign_runs") as batch:
        batch.add_column(sa.Column("kind", sa.String(10), nullable=False, server_default="release"))
    with op.batch_alter_table("outreaches") as batch:
        batch.add_column(sa.Column("resend_of", sa.String(40), nullable=True))
        batch.add_column(sa.Column("resend_state", sa.String(60), nullable=True))
        batch.add_column(sa.Column("resend_due_at", sa.DateTime(timezone=True), nullable=True))
    # Never a second resend of the same original.
    op.create_index("uq_outreaches_resend_of", "outreaches", ["resend_of"], unique=True)
    # The cool-down looks up a person's last outreach of a campaign.
    op.create_index("ix_outreaches_campaign_profile", "outreaches", ["campaign_key", "profile_id", "created_at"])
    # The resend runner pages a campaign's dispatched outreaches still waiting for a decision.
    op.create_index("ix_outreaches_resend_pending", "outreaches", ["campaign_key", "resend_state", "dispatched_at"])


def downgrade() -> None:
    op.drop_index("ix_outreaches_resend_pending", "outreaches")
    op.drop_index("ix_outreaches_campaign_profile", "outreaches")
    op.drop_index("uq_outreaches_resend_of", "outreaches")
    with op.batch_alter_table("outreaches") as batch:
        batch.drop_column("resend_due_at")
        batch.drop_column("resend_state")
        batch.drop_column("resend_of")
    with op.batch_alter_table("campaign_runs") as batch:
        batch.drop_column("kind")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("automation")
    op.drop_table("inbox")
