"""The views' rollup, holdouts and conversions without a campaign ID; outreaches gain labels_key.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

The rollup starts empty: on a ledger that already holds outreaches, run
`python -m services.attribution.reconcile --fix` once after upgrading to fill it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(100)
WHEN = sa.DateTime(timezone=True)
LABELS = sa.String(1000)
SEPARATOR = "\x1f"
COUNTERS = (
    "sent",
    *(
        f"f_{step}"
        for step in ("sent", "delivered", "opened", "clicked", "responded", "applied", "sanctioned", "disbursed")
    ),
    "disbursed_paise",
    "lifetime_paise",
    "year1_paise",
    "cost_paise",
    *(f"lag_{index}" for index in range(8)),
)


def _labels_key(labels: object) -> str:
    unique = sorted({str(label) for label in labels or [] if label}) if isinstance(labels, list) else []
    return SEPARATOR + SEPARATOR.join(unique) + SEPARATOR if unique else ""


def upgrade() -> None:
    op.add_column("outreaches", sa.Column("labels_key", LABELS, nullable=False, server_default=""))
    op.create_index("ix_outreaches_profile_id", "outreaches", ["profile_id"])
    outreaches = sa.table(
        "outreaches", sa.column("campaign_id", ID), sa.column("labels", sa.JSON()), sa.column("labels_key", LABELS)
    )
    bind = op.get_bind()
    for campaign_id, labels in bind.execute(sa.select(outreaches.c.campaign_id, outreaches.c.labels)).all():
        key = _labels_key(labels)
        if key:
            bind.execute(sa.update(outreaches).where(outreaches.c.campaign_id == campaign_id).values(labels_key=key))

    op.create_table(
        "rollup",
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("campaign_key", ID, nullable=False),
        sa.Column("programme", sa.String(20), nullable=False),
        sa.Column("trigger_code", sa.String(20), nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("product_code", ID, nullable=False),
        sa.Column("labels_key", LABELS, nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0") for name in COUNTERS),
        sa.PrimaryKeyConstraint(
            "day", "campaign_key", "programme", "trigger_code", "channel", "product_code", "labels_key"
        ),
    )
    op.create_table(
        "holdouts",
        sa.Column("campaign_key", ID, nullable=False),
        sa.Column("run_id", ID, nullable=False),
        sa.Column("profile_id", ID, nullable=False),
        sa.Column("trigger_code", sa.String(20), nullable=False),
        sa.Column("product_code", ID, nullable=False),
        sa.Column("labels_key", LABELS, nullable=False),
        sa.Column("assigned_at", WHEN, nullable=False),
        sa.PrimaryKeyConstraint("campaign_key", "run_id", "profile_id"),
    )
    op.create_index("ix_holdouts_profile_id", "holdouts", ["profile_id"])
    op.create_table(
        "profile_conversions",
        sa.Column("conversion_id", ID, primary_key=True),
        sa.Column("profile_id", ID, nullable=False),
        sa.Column("product_code", ID, nullable=False),
        sa.Column("amount_paise", sa.BigInteger(), nullable=False),
        sa.Column("currency_code", sa.String(3), nullable=False),
        sa.Column("occurred_at", WHEN, nullable=False),
        sa.Column("recorded_at", WHEN, nullable=False),
    )
    op.create_index("ix_profile_conversions_profile_id", "profile_conversions", ["profile_id"])


def downgrade() -> None:
    op.drop_table("profile_conversions")
    op.drop_table("holdouts")
    op.drop_table("rollup")
    op.drop_index("ix_outreaches_profile_id", "outreaches")
    op.drop_column("outreaches", "labels_key")
