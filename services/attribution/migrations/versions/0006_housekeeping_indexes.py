"""Indexes for the relay's housekeeping: the outbox's waiting rows (so the relay never walks past published
ones) and the inbox by age (so old entries are pruned without a scan).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 04:00:00
"""

from collections.abc import Sequence

from plumbing.migrations import (
    create_inbox_applied_index,
    create_outbox_waiting_index,
    drop_inbox_applied_index,
    drop_outbox_waiting_index,
)

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_outbox_waiting_index()
    create_inbox_applied_index()


def downgrade() -> None:
    drop_inbox_applied_index()
    drop_outbox_waiting_index()
