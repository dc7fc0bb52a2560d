"""request_ids scoped per caller: the idempotency table is keyed by (method, request_id, scope), the scope being the
gateway's API key (plumbing.idempotency). Two integrations that number their requests alike ("1", "2"... under two
keys) were answered each other's responses, or ABORTED for a request_id the other had used.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 09:00:00
"""

from collections.abc import Sequence

from plumbing.migrations import scope_idempotency_requests, unscope_idempotency_requests

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    scope_idempotency_requests()


def downgrade() -> None:
    unscope_idempotency_requests()
