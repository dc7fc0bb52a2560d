"""The outbox's index by publication time covers published rows only, so adding an event writes one index fewer.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 12:00:00
"""

from collections.abc import Sequence

from plumbing.migrations import outbox_published_index_full, outbox_published_index_partial

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    outbox_published_index_partial()


def downgrade() -> None:
    outbox_published_index_full()
