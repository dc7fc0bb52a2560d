"""Governance: campaign versions, maker and checker, pause origin, the audit log and version snapshots.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("version", sa.BigInteger(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("author", sa.String(200), nullable=False, server_default="internal"))
        batch.add_column(sa.Column("approver", sa.String(200), nullable=True))
        batch.add_column(sa.Column("paused_from", sa.String(20), nullable=True))
        batch.add_column(sa.Column("pause_reason", sa.Text(), nullable=True))
    op.create_table(
        "campaign_audit",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("campaign_key", sa.String(40), sa.ForeignKey("campaigns.campaign_key"), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_campaign_audit_campaign_seq", "campaign_audit", ["campaign_key", "seq"])
    op.create_table(
        "campaign_versions",
        sa.Column("campaign_key", sa.String(40), sa.ForeignKey("campaigns.campaign_key"), primary_key=True),
        sa.Column("version", sa.BigInteger(), primary_key=True),
        sa.Column("definition", sa.LargeBinary(), nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("campaign_versions")
    op.drop_index("ix_campaign_audit_campaign_seq", table_name="campaign_audit")
    op.drop_table("campaign_audit")
    with op.batch_alter_table("campaigns") as batch:
        for column in ("pause_reason", "paused_from", "approver", "author", "version"):
            batch.drop_column(column)
