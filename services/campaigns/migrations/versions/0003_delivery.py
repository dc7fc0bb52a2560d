"""Delivery: recurring runs (one per occurrence), staggered dispatch, quiet hours, funnel counts, engagement.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 00:00:01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DT = sa.DateTime(timezone=True)


def _runs_without_the_one_run_rule() -> sa.Table:
    """campaign_runs as 0001 made it, minus UNIQUE(campaign_key): batch mode copies the table from this."""
    return sa.Table(
        "campaign_runs",
        sa.MetaData(),
        sa.Column("run_id", sa.String(40), primary_key=True),
        sa.Column("campaign_key", sa.String(40), sa.ForeignKey("campaigns.campaign_key"), nullable=False),
        sa.Column("month", sa.String(3), nullable=False),
        sa.Column("cursor", sa.Text(), nullable=False),
        sa.Column("pages_released", sa.Integer(), nullable=False),
        sa.Column("outreach_count", sa.BigInteger(), nullable=False),
        sa.Column("skipped_no_email", sa.BigInteger(), nullable=False),
        sa.Column("skipped_render", sa.BigInteger(), nullable=False),
        sa.Column("due_at", _DT, nullable=False),
        sa.Column("created_at", _DT, nullable=False),
        sa.Column("completed_at", _DT, nullable=True),
        sa.Index("ix_campaign_runs_open", "completed_at", "due_at"),
    )


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("options", sa.JSON(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("campaign_runs_campaign_key_key", "campaign_runs", type_="unique")
        runs = op.batch_alter_table("campaign_runs")
    else:
        # SQLite cannot drop an unnamed constraint: the table is rebuilt from the definition above.
        runs = op.batch_alter_table("campaign_runs", copy_from=_runs_without_the_one_run_rule(), recreate="always")
    with runs as batch:
        batch.add_column(sa.Column("occurrence_at", _DT, nullable=True))
        batch.add_column(sa.Column("materialized_at", _DT, nullable=True))
        batch.add_column(sa.Column("released_through", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("next_step_at", _DT, nullable=True))
        for name in ("audience", "held_out", "suppressed", "capped"):
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"))
        batch.create_unique_constraint("uq_campaign_runs_occurrence", ["campaign_key", "occurrence_at"])
    # Runs that existed before are send-now runs: everything they created was dispatched with it.
    op.execute("UPDATE campaign_runs SET occurrence_at = due_at, materialized_at = completed_at")
    with op.batch_alter_table("outreaches") as batch:
        batch.drop_constraint("uq_outreaches_campaign_profile", type_="unique")
        batch.add_column(sa.Column("ordinal", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("dispatch_payload", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("recipient_time_zone", sa.String(64), nullable=True))
        batch.add_column(sa.Column("dispatch_after", _DT, nullable=True))
        batch.add_column(sa.Column("dispatched_at", _DT, nullable=True))
        batch.add_column(sa.Column("test", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("opened_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("clicked_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("replied_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("bounced_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("complained_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("opted_out_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_unique_constraint("uq_outreaches_run_profile", ["run_id", "profile_id"])
        batch.create_index("ix_outreaches_run_ordinal", ["run_id", "ordinal"])
    op.execute("UPDATE outreaches SET dispatched_at = created_at")


def downgrade() -> None:
    raise NotImplementedError("0003 is not reversible: recurring campaigns have several runs per campaign")
