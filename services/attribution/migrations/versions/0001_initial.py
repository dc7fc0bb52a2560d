"""The attribution ledger: outreaches, funnel, costs, leads, loans, disbursements; outbox, inbox, idempotency.

Revision ID: 0001
Revises:
Create Date: 2025-11-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(100)
WHEN = sa.DateTime(timezone=True)
SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("seq", SERIAL, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("published_at", WHEN, nullable=True),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index("ix_outbox_published_at", "outbox", ["published_at"])
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(100), primary_key=True),
        sa.Column("message_id", sa.String(200), primary_key=True),
        sa.Column("applied_at", WHEN, nullable=False),
    )
    op.create_table(
        "idempotency",
        sa.Column("method", sa.String(100), primary_key=True),
        sa.Column("request_id", sa.String(200), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
    )
    op.create_table(
        "outreaches",
        sa.Column("campaign_id", ID, primary_key=True),
        sa.Column("campaign_key", ID, nullable=False),
        sa.Column("profile_id", ID, nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("trigger_code", sa.String(20), nullable=False),
        sa.Column("product_code", ID, nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("category", sa.String(60), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
    )
    op.create_index("ix_outreaches_campaign_key", "outreaches", ["campaign_key"])
    op.create_index("ix_outreaches_trigger_code", "outreaches", ["trigger_code"])
    op.create_table(
        "funnel_steps",
        sa.Column("campaign_id", ID, sa.ForeignKey("outreaches.campaign_id"), nullable=False),
        sa.Column("step", sa.String(20), nullable=False),
        sa.Column("first_at", WHEN, nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "step"),
    )
    op.create_table(
        "costs",
        sa.Column("cost_id", SERIAL, primary_key=True, autoincrement=True),
        sa.Column("campaign_id", ID, sa.ForeignKey("outreaches.campaign_id"), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("amount_paise", sa.BigInteger(), nullable=False),
        sa.Column("currency_code", sa.String(3), nullable=False),
        sa.Column("ref", ID, nullable=False),
        sa.Column("at", WHEN, nullable=False),
    )
    op.create_index("ix_costs_campaign_id", "costs", ["campaign_id"])
    op.create_table(
        "leads",
        sa.Column("lead_id", ID, primary_key=True),
        sa.Column("campaign_id", ID, sa.ForeignKey("outreaches.campaign_id"), nullable=False),
        sa.Column("crm_lead_id", ID, nullable=False),
        sa.Column("origin", sa.String(20), nullable=False),
        sa.Column("dedup_key", sa.String(120), nullable=True),
        sa.Column("created_at", WHEN, nullable=False),
        sa.UniqueConstraint("dedup_key"),
    )
    op.create_index("ix_leads_campaign_id", "leads", ["campaign_id"])
    op.create_table(
        "loans",
        sa.Column("loan_number", ID, primary_key=True),
        sa.Column("campaign_id", ID, sa.ForeignKey("outreaches.campaign_id"), nullable=False),
        sa.Column("product_code", ID, nullable=False),
        sa.Column("stage", sa.String(20), nullable=False),
        sa.Column("currency_code", sa.String(3), nullable=False),
        sa.Column("sanctioned_paise", sa.BigInteger(), nullable=True),
        sa.Column("disbursed_paise", sa.BigInteger(), nullable=False),
        sa.Column("applied_at", WHEN, nullable=False),
        sa.Column("sanctioned_at", WHEN, nullable=True),
        sa.Column("first_disbursed_at", WHEN, nullable=True),
        sa.Column("last_disbursed_at", WHEN, nullable=True),
    )
    op.create_index("ix_loans_campaign_id", "loans", ["campaign_id"])
    op.create_table(
        "disbursements",
        sa.Column("disbursement_id", ID, primary_key=True),
        sa.Column("loan_number", ID, sa.ForeignKey("loans.loan_number"), nullable=False),
        sa.Column("campaign_id", ID, sa.ForeignKey("outreaches.campaign_id"), nullable=False),
        sa.Column("amount_paise", sa.BigInteger(), nullable=False),
        sa.Column("currency_code", sa.String(3), nullable=False),
        sa.Column("disbursed_at", WHEN, nullable=False),
        sa.Column("lifetime_revenue_paise", sa.BigInteger(), nullable=False),
        sa.Column("year1_revenue_paise", sa.BigInteger(), nullable=False),
        sa.Column("revenue_model", ID, nullable=False),
        sa.Column("recorded_at", WHEN, nullable=False),
    )
    op.create_index("ix_disbursements_loan_number", "disbursements", ["loan_number"])
    op.create_index("ix_disbursements_campaign_id", "disbursements", ["campaign_id"])


def downgrade() -> None:
    for table in ("disbursements", "loans", "leads", "costs", "funnel_steps", "outreaches"):
        op.drop_table(table)
    op.drop_table("idempotency")
    op.drop_table("inbox")
    op.drop_index("ix_outbox_published_at", table_name="outbox")
    op.drop_table("outbox")
