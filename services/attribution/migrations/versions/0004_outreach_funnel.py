"""The funnel steps move to one narrow row per outreach (outreach_funnel), and outreaches and costs name their group
of rollup dimensions (outreach_groups) by a small integer, so a recompute scans a million rows without a join.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

Backfilled from the rows already in the ledger (groups from the outreaches, each outreach's steps from funnel_steps,
each cost's group from its outreach), so an upgraded ledger reconciles with its rollup as before: no rebuild needed.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(100)
WHEN = sa.DateTime(timezone=True)
STEPS = ("sent", "delivered", "opened", "clicked", "responded", "applied", "sanctioned", "disbursed", "activated")
DIMENSIONS = ("campaign_key", "programme", "trigger_code", "channel", "product_code", "labels_key")


def _programme(column: str) -> str:
    """reporting.programme_of in SQL: the campaign ID up to its first "-", or all of it without one."""
    if op.get_bind().dialect.name == "postgresql":
        return f"split_part({column}, '-', 1)"
    return f"CASE WHEN instr({column}, '-') = 0 THEN {column} ELSE substr({column}, 1, instr({column}, '-') - 1) END"


def upgrade() -> None:
    op.create_table(
        "outreach_groups",
        sa.Column("group_id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("campaign_key", ID, nullable=False),
        sa.Column("programme", sa.String(20), nullable=False),
        sa.Column("trigger_code", sa.String(20), nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("product_code", ID, nullable=False),
        sa.Column("labels_key", sa.String(1000), nullable=False),
        sa.UniqueConstraint(*DIMENSIONS, name="uq_outreach_groups_dimensions"),
    )
    programme = _programme("o.campaign_id")
    op.execute(
        f"INSERT INTO outreach_groups ({', '.join(DIMENSIONS)}) "
        f"SELECT DISTINCT o.campaign_key, {programme}, o.trigger_code, o.channel, o.product_code, o.labels_key "
        "FROM outreaches o"
    )
    op.create_table(
        "outreach_funnel",
        sa.Column("campaign_id", ID, sa.ForeignKey("outreaches.campaign_id"), primary_key=True),
        sa.Column("group_id", sa.Integer(), sa.ForeignKey("outreach_groups.group_id"), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        *(sa.Column(f"{step}_at", WHEN, nullable=True) for step in STEPS),
    )
    pivot = ", ".join(f"MAX(CASE WHEN step = '{step}' THEN first_at END) AS {step}_at" for step in STEPS)
    same_group = " AND ".join(f"g.{name} = {programme if name == 'programme' else 'o.' + name}" for name in DIMENSIONS)
    op.execute(
        f"INSERT INTO outreach_funnel (campaign_id, group_id, created_at, {', '.join(f'{s}_at' for s in STEPS)}) "
        f"SELECT o.campaign_id, g.group_id, o.created_at, {', '.join(f's.{step}_at' for step in STEPS)} "
        f"FROM outreaches o JOIN outreach_groups g ON {same_group} "
        f"LEFT JOIN (SELECT campaign_id, {pivot} FROM funnel_steps GROUP BY campaign_id) s "
        "ON s.campaign_id = o.campaign_id"
    )
    op.add_column("costs", sa.Column("group_id", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE costs SET group_id = (SELECT f.group_id FROM outreach_funnel f WHERE f.campaign_id = costs.campaign_id)"
    )
    with op.batch_alter_table("costs") as costs:
        costs.alter_column("group_id", existing_type=sa.Integer(), nullable=False)
        costs.create_foreign_key("fk_costs_group_id_outreach_groups", "outreach_groups", ["group_id"], ["group_id"])
    op.drop_table("funnel_steps")


def downgrade() -> None:
    op.create_table(
        "funnel_steps",
        sa.Column("campaign_id", ID, sa.ForeignKey("outreaches.campaign_id"), nullable=False),
        sa.Column("step", sa.String(20), nullable=False),
        sa.Column("first_at", WHEN, nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "step"),
    )
    for step in STEPS:
        op.execute(
            f"INSERT INTO funnel_steps (campaign_id, step, first_at) "
            f"SELECT campaign_id, '{step}', {step}_at FROM outreach_funnel WHERE {step}_at IS NOT NULL"
        )
    with op.batch_alter_table("costs") as costs:
        costs.drop_constraint("fk_costs_group_id_outreach_groups", type_="foreignkey")
        costs.drop_column("group_id")
    op.drop_table("outreach_funnel")
    op.drop_table("outreach_groups")
