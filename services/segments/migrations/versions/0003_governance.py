"""Segment versions, approvals, audit log, suppressions and sweep bookkeeping (issue 3).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "segment_versions",
        sa.Column("segment_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("rule", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("author", sa.String(length=200), nullable=False),
        sa.Column("approver", sa.String(length=200), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["segment_id"], ["segments.segment_id"]),
        sa.PrimaryKeyConstraint("segment_id", "version"),
    )
    # Segments created before versions existed become their own version 1, written by "internal".
    op.execute(
        "INSERT INTO segment_versions (segment_id, version, display_name, description, rule, state, author,"
        " approver, create_time, update_time)"
        " SELECT segment_id, version, display_name, description, rule, state, 'internal', '', create_time,"
        " COALESCE(publish_time, create_time) FROM segments"
    )
    op.create_table(
        "segment_audit",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("segment_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["segment_id"], ["segments.segment_id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_segment_audit_segment", "segment_audit", ["segment_id", "id"])
    op.create_table(
        "suppressions",
        sa.Column("profile_id", sa.String(length=128), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("note", sa.String(length=500), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("profile_id", "channel", "reason"),
    )
    op.create_table(
        "sweeps",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("swept_until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("sweeps")
    op.drop_table("suppressions")
    op.drop_index("ix_segment_audit_segment", table_name="segment_audit")
    op.drop_table("segment_audit")
    op.drop_table("segment_versions")
