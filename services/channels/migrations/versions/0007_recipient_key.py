"""SMS and WhatsApp messages keep a keyed hash of the recipient's number, indexed, so an inbound message that quotes
none of ours (a "STOP", a "YES" typed fresh) finds the last message sent to that number.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 18:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from plumbing.migrations import create_partial_index

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("recipient_key", sa.String(32), nullable=True))
    # Partial: e-mail, push and webhook messages have none, and add nothing to write.
    create_partial_index("ix_messages_recipient_key", "messages", ["recipient_key"], "recipient_key IS NOT NULL")


def downgrade() -> None:
    op.drop_index("ix_messages_recipient_key", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("recipient_key")
