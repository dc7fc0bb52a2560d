"""Campaigns, their runs, campaign-ID counters, outreaches, the outbox and request_id idempotency.

Revision ID: 0001
Revises:
Create Date: 2026-11-26 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_outbox_published_at", "outbox", ["published_at"])
    op.create_table(
        "idempotency",
        sa.Column("method", sa.String(100), primary_key=True),
        sa.Column("request_id", sa.String(200), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "campaigns",
        sa.Column("campaign_key", sa.String(40), primary_key=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("category", sa.Integer(), nullable=False),
        sa.Column("programme", sa.String(10), nullable=False),
        sa.Column("trigger_code", sa.String(3), nullable=False),
        sa.Column("segment_id", sa.String(100), nullable=False),
        sa.Column("segment_version", sa.BigInteger(), nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("offer_product_code", sa.String(100), nullable=False),
        sa.Column("offer_amount_minor", sa.BigInteger(), nullable=True),
        sa.Column("offer_currency", sa.String(3), nullable=True),
        sa.Column("subject_template", sa.Text(), nullable=False),
        sa.Column("html_template", sa.Text(), nullable=False),
        sa.Column("text_template", sa.Text(), nullable=False),
        sa.Column("from_name", sa.String(200), nullable=False),
        sa.Column("send_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("time_zone", sa.String(64), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("outreach_count", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("launched_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "campaign_runs",
        sa.Column("run_id", sa.String(40), primary_key=True),
        sa.Column("campaign_key", sa.String(40), sa.ForeignKey("campaigns.campaign_key"), nullable=False, unique=True),
        sa.Column("month", sa.String(3), nullable=False),
        sa.Column("cursor", sa.Text(), nullable=False),
        sa.Column("pages_released", sa.Integer(), nullable=False),
        sa.Column("outreach_count", sa.BigInteger(), nullable=False),
        sa.Column("skipped_no_email", sa.BigInteger(), nullable=False),
        sa.Column("skipped_render", sa.BigInteger(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_campaign_runs_open", "campaign_runs", ["completed_at", "due_at"])
    op.create_table(
        "campaign_id_counters",
        sa.Column("programme", sa.String(10), primary_key=True),
        sa.Column("month", sa.String(3), primary_key=True),
        sa.Column("trigger_code", sa.String(3), primary_key=True),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "outreaches",
        sa.Column("campaign_id", sa.String(40), primary_key=True),
        sa.Column("campaign_key", sa.String(40), sa.ForeignKey("campaigns.campaign_key"), nullable=False),
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("profile_id", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("trigger_code", sa.String(3), nullable=False),
        sa.Column("offer_product_code", sa.String(100), nullable=False),
        sa.Column("offer_amount_minor", sa.BigInteger(), nullable=True),
        sa.Column("offer_currency", sa.String(3), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("category", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("campaign_key", "profile_id", name="uq_outreaches_campaign_profile"),
    )
    op.create_index("ix_outreaches_campaign_key_campaign_id", "outreaches", ["campaign_key", "campaign_id"])


def downgrade() -> None:
    op.drop_index("ix_outreaches_campaign_key_campaign_id", table_name="outreaches")
    op.drop_table("outreaches")
    op.drop_table("campaign_id_counters")
    op.drop_index("ix_campaign_runs_open", table_name="campaign_runs")
    op.drop_table("campaign_runs")
    op.drop_table("campaigns")
    op.drop_table("idempotency")
    op.drop_index("ix_outbox_published_at", table_name="outbox")
    op.drop_table("outbox")
