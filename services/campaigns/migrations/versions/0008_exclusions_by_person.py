"""An index to find one person's exclusions across a campaign's runs (ExplainOutreach).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 09:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_run_exclusions_person", "run_exclusions", ["campaign_key", "profile_id"])


def downgrade() -> None:
    op.drop_index("ix_run_exclusions_person", table_name="run_exclusions")
