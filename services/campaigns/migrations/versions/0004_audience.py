"""Audience at release: who was left out of each run and why, the contact ledger caps count, withdrawn outreaches.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 00:00:01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DT = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("outreaches") as batch:
        batch.add_column(sa.Column("withdrawn_at", _DT, nullable=True))
    op.create_table(
        "run_exclusions",
        sa.Column("run_id", sa.String(40), primary_key=True),
        sa.Column("profile_id", sa.String(200), primary_key=True),
        sa.Column("campaign_key", sa.String(40), sa.ForeignKey("campaigns.campaign_key"), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("reason", sa.String(40), nullable=False),
        sa.Column("created_at", _DT, nullable=False),
    )
    op.create_table(
        "contact_ledger",
        sa.Column("campaign_id", sa.String(40), primary_key=True),
        sa.Column("profile_id", sa.String(200), nullable=False),
        sa.Column("campaign_key", sa.String(40), nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("category", sa.Integer(), nullable=False),
        sa.Column("contacted_at", _DT, nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("offer_value_minor", sa.BigInteger(), nullable=False),
        sa.Column("launched_at", _DT, nullable=False),
    )
    op.create_index("ix_contact_ledger_profile_time", "contact_ledger", ["profile_id", "contacted_at"])
    # Outreaches released before the ledger existed count against caps too (priority unknown: 0).
    op.execute(
        "INSERT INTO contact_ledger (campaign_id, profile_id, campaign_key, channel, category, contacted_at,"
        " priority, offer_value_minor, launched_at)"
        " SELECT o.campaign_id, o.profile_id, o.campaign_key, o.channel, o.category, o.created_at, 0,"
        " COALESCE(o.offer_amount_minor, 0), COALESCE(c.launched_at, o.created_at)"
        " FROM outreaches o JOIN campaigns c ON c.campaign_key = o.campaign_key WHERE NOT o.test"
    )


def downgrade() -> None:
    op.drop_index("ix_contact_ledger_profile_time", table_name="contact_ledger")
    op.drop_table("contact_ledger")
    op.drop_table("run_exclusions")
    with op.batch_alter_table("outreaches") as batch:
        batch.drop_column("withdrawn_at")
