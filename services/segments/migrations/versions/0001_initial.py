"""Initial segments schema: profiles (EAV attributes), events, segments, memberships, outbox, inbox, idempotency.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "profiles",
        sa.Column("profile_id", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("profile_id"),
    )
    op.create_table(
        "profile_attributes",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("profile_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value_type", sa.String(length=32), nullable=False),
        sa.Column("text_value", sa.String(length=1024), nullable=True),
        sa.Column("num_value", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(["profile_id"], ["profiles.profile_id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_profile_attributes_name_num", "profile_attributes", ["name", "num_value"])
    op.create_index("ix_profile_attributes_name_text", "profile_attributes", ["name", "text_value"])
    op.create_index("ix_profile_attributes_profile", "profile_attributes", ["profile_id", "name"])
    op.create_table(
        "events",
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("profile_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["profile_id"], ["profiles.profile_id"]),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("ix_events_name_time", "events", ["name", "occurred_at"])
    op.create_index("ix_events_profile_name_time", "events", ["profile_id", "name", "occurred_at"])
    op.create_table(
        "segments",
        sa.Column("segment_id", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("rule", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("member_count", sa.BigInteger(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("publish_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("segment_id"),
    )
    op.create_table(
        "memberships",
        sa.Column("segment_id", sa.String(length=64), nullable=False),
        sa.Column("profile_id", sa.String(length=128), nullable=False),
        sa.Column("segment_version", sa.BigInteger(), nullable=False),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["profile_id"], ["profiles.profile_id"]),
        sa.ForeignKeyConstraint(["segment_id"], ["segments.segment_id"]),
        sa.PrimaryKeyConstraint("segment_id", "profile_id"),
    )
    op.create_table(
        "outbox",
        sa.Column("seq", _ID, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index(op.f("ix_outbox_published_at"), "outbox", ["published_at"])
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(length=100), nullable=False),
        sa.Column("message_id", sa.String(length=200), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "message_id"),
    )
    op.create_table(
        "idempotency",
        sa.Column("method", sa.String(length=100), nullable=False),
        sa.Column("request_id", sa.String(length=200), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("method", "request_id"),
    )


def downgrade() -> None:
    op.drop_table("idempotency")
    op.drop_table("inbox")
    op.drop_index(op.f("ix_outbox_published_at"), table_name="outbox")
    op.drop_table("outbox")
    op.drop_table("memberships")
    op.drop_table("segments")
    op.drop_index("ix_events_profile_name_time", table_name="events")
    op.drop_index("ix_events_name_time", table_name="events")
    op.drop_table("events")
    op.drop_index("ix_profile_attributes_profile", table_name="profile_attributes")
    op.drop_index("ix_profile_attributes_name_text", table_name="profile_attributes")
    op.drop_index("ix_profile_attributes_name_num", table_name="profile_attributes")
    op.drop_table("profile_attributes")
    op.drop_table("profiles")
