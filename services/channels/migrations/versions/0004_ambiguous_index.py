"""Messages are indexed by state only when AMBIGUOUS (an operator's list), not in every state they pass through.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 12:30:00
"""

from collections.abc import Sequence

from alembic import op

from plumbing.migrations import create_partial_index

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AMBIGUOUS = "state = 'AMBIGUOUS'"


def upgrade() -> None:
    op.drop_index("ix_messages_state", table_name="messages")
    create_partial_index("ix_messages_ambiguous", "messages", ["updated_at"], AMBIGUOUS)


def downgrade() -> None:
    op.drop_index("ix_messages_ambiguous", table_name="messages")
    op.create_index("ix_messages_state", "messages", ["state"])
