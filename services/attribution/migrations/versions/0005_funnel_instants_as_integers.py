"""The instants a recompute takes a million local days of (outreach_funnel's and the costs') become whole microseconds
since 1970-01-01 UTC (BIGINT), so their days are integer arithmetic instead of parsing (SQLite's date() on text).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

Every instant is converted exactly (to the microsecond), so an upgraded ledger reconciles with its rollup as before:
no rebuild needed.
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STEPS = ("sent", "delivered", "opened", "clicked", "responded", "applied", "sanctioned", "disbursed", "activated")
INSTANTS = {"outreach_funnel": ("created_at", *(f"{step}_at" for step in STEPS)), "costs": ("at",)}
NULLABLE = {f"{step}_at" for step in STEPS}

# SQLAlchemy stores an instant on SQLite as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC): whole seconds by strftime('%s') of the
# text without its fraction (with it, SQLite rounds to the millisecond: 59.999999 s would become the next second), then
# the fraction's digits (padded, should a value have fewer than six). And back: the same text from the integer.
SQLITE_TO_MICROS = (
    "CAST(strftime('%s', substr({0}, 1, 19)) AS INTEGER) * 1000000 + CAST(substr({0} || '000000', 21, 6) AS INTEGER)"
)
SQLITE_TO_TEXT = "datetime({0} / 1000000, 'unixepoch') || printf('.%06d', {0} % 1000000)"


def _sqlite_convert(table: str, expression: str) -> None:
    """Rewrites the table's instants in place (SQLite keeps a value of any type in any column)."""
    op.execute(f"UPDATE {table} SET " + ", ".join(f"{name} = {expression.format(name)}" for name in INSTANTS[table]))


def _sqlite_retype(table: str, instant_type: sa.types.TypeEngine[Any]) -> None:
    """Declares the instants' new type: SQLite copies the table (alembic's batch mode keeps its keys and indexes); the
    copy's CAST leaves the values as they are, as they already have the type."""
    with op.batch_alter_table(table) as batch:
        for name in INSTANTS[table]:
            batch.alter_column(name, type_=instant_type, existing_nullable=name in NULLABLE)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # EXTRACT(EPOCH …) is numeric since PostgreSQL 14: exact to the microsecond. One statement, one rewrite each.
        for table, names in INSTANTS.items():
            op.execute(
                f"ALTER TABLE {table} "
                + ", ".join(
                    f"ALTER COLUMN {name} TYPE BIGINT USING (EXTRACT(EPOCH FROM {name}) * 1000000)::BIGINT"
                    for name in names
                )
            )
        return
    for table in INSTANTS:
        _sqlite_convert(table, SQLITE_TO_MICROS)
        _sqlite_retype(table, sa.BigInteger())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, names in INSTANTS.items():
            op.execute(
                f"ALTER TABLE {table} "
                + ", ".join(
                    f"ALTER COLUMN {name} TYPE TIMESTAMP WITH TIME ZONE "
                    f"USING TIMESTAMPTZ 'epoch' + {name} * INTERVAL '1 microsecond'"
                    for name in names
                )
            )
        return
    for table in INSTANTS:
        _sqlite_retype(table, sa.DateTime(timezone=True))
        _sqlite_convert(table, SQLITE_TO_TEXT)
