"""The outbox's index by publication time covers published rows only, so adding an event writes one index fewer.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 12:00:00
"""

from collections.abc import Sequence

from plumbing.migrations import outbox_published_index_full, outbox_published_index_partial

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    outbox_published_index_partial()


def downgrade() -> None:
    outbox_published_index_full()
