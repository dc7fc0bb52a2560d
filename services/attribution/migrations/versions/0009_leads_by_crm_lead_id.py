"""Leads by the CRM's lead id, in id order: the lead a CRM lead id names (a reply's lead the CRM claimed included),
and ListLeads' leads awaiting one (crm_lead_id "").

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 09:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_leads_crm_lead_id", "leads", ["crm_lead_id", "lead_id"])


def downgrade() -> None:
    op.drop_index("ix_leads_crm_lead_id", table_name="leads")
