"""The outbox's waiting rows get their own partial index, so the relay never walks past published ones.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 04:00:00
"""

from collections.abc import Sequence

from plumbing.migrations import create_outbox_waiting_index, drop_outbox_waiting_index

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_outbox_waiting_index()


def downgrade() -> None:
    drop_outbox_waiting_index()
