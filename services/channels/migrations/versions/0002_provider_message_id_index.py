"""Messages are found by the provider's id: provider webhooks (a WhatsApp reply quotes the wamid) name them so.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 07:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_messages_provider_message_id", "messages", ["provider_message_id"])


def downgrade() -> None:
    op.drop_index("ix_messages_provider_message_id", table_name="messages")
