"""An AMBIGUOUS message names the dispatch request it came from (stream and sequence), so it can be handed over
again, once, when its provider sent no receipt for it; resent_at marks that once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("request_stream", sa.String(64), nullable=True))
    op.add_column("messages", sa.Column("request_seq", sa.BigInteger(), nullable=True))
    op.add_column("messages", sa.Column("resent_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("resent_at")
        batch.drop_column("request_seq")
        batch.drop_column("request_stream")
