"""The contact ledger is pruned by time: an index on contacted_at.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 00:00:01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_contact_ledger_contacted_at", "contact_ledger", ["contacted_at"])


def downgrade() -> None:
    op.drop_index("ix_contact_ledger_contacted_at", table_name="contact_ledger")
