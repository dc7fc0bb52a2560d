"""Fund, deposit and card conversions; fixed campaign costs and their shares; the activated funnel step.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

The rollup gains f_activated (0 everywhere: nothing was activated before this revision), so no rebuild is needed.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(100)
WHEN = sa.DateTime(timezone=True)
MONEY = sa.BigInteger()


def upgrade() -> None:
    with op.batch_alter_table("rollup") as rollup:
        rollup.add_column(sa.Column("f_activated", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_table(
        "conversions",
        sa.Column("conversion_id", ID, primary_key=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("campaign_id", ID, sa.ForeignKey("outreaches.campaign_id"), nullable=True),
        sa.Column("linkage", sa.String(20), nullable=False),
        sa.Column("profile_id", ID, nullable=False),
        sa.Column("product_code", ID, nullable=False),
        sa.Column("amount_paise", MONEY, nullable=False),
        sa.Column("currency_code", sa.String(3), nullable=False),
        sa.Column("occurred_at", WHEN, nullable=False),
        sa.Column("lifetime_revenue_paise", MONEY, nullable=False),
        sa.Column("year1_revenue_paise", MONEY, nullable=False),
        sa.Column("revenue_model", ID, nullable=False),
        sa.Column("recorded_at", WHEN, nullable=False),
    )
    op.create_index("ix_conversions_campaign_id", "conversions", ["campaign_id"])
    op.create_index("ix_conversions_profile_id", "conversions", ["profile_id"])
    op.create_table(
        "fixed_costs",
        sa.Column("cost_id", ID, primary_key=True),
        sa.Column("campaign_key", ID, nullable=False),
        sa.Column("amount_paise", MONEY, nullable=False),
        sa.Column("currency_code", sa.String(3), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("booked_at", WHEN, nullable=False),
    )
    op.create_index("ix_fixed_costs_campaign_key", "fixed_costs", ["campaign_key"])
    op.create_table(
        "fixed_cost_shares",
        sa.Column("cost_id", ID, sa.ForeignKey("fixed_costs.cost_id"), nullable=False),
        sa.Column("programme", sa.String(20), nullable=False),
        sa.Column("trigger_code", sa.String(20), nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("product_code", ID, nullable=False),
        sa.Column("labels_key", sa.String(1000), nullable=False),
        sa.Column("amount_paise", MONEY, nullable=False),
        sa.PrimaryKeyConstraint("cost_id", "programme", "trigger_code", "channel", "product_code", "labels_key"),
    )


def downgrade() -> None:
    op.drop_table("fixed_cost_shares")
    op.drop_table("fixed_costs")
    op.drop_table("conversions")
    with op.batch_alter_table("rollup") as rollup:
        rollup.drop_column("f_activated")
