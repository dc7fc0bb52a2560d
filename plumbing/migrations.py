"""The body of every service's Alembic env.py: migrate the connection Database.migrate passes in."""

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy import MetaData


def run_migrations(target_metadata: MetaData) -> None:
    """Runs the pending migrations on the connection handed over by Database.migrate."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("migrations run through Database.migrate(), which hands alembic a connection")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def create_partial_index(name: str, table: str, columns: list[str], where: str, *, unique: bool = False) -> None:
    """An index over the rows that meet `where` (SQL text), the same on SQLite and PostgreSQL."""
    op.create_index(name, table, columns, unique=unique, sqlite_where=sa.text(where), postgresql_where=sa.text(where))


def create_outbox_waiting_index() -> None:
    """The partial index of the outbox rows not yet published (plumbing.outbox's ix_outbox_waiting), in seq order.

    Shared by every service's migration that adds it, so the index is the same in each.
    """
    from plumbing.outbox import WAITING

    create_partial_index("ix_outbox_waiting", "outbox", ["seq"], WAITING)


def drop_outbox_waiting_index() -> None:
    op.drop_index("ix_outbox_waiting", table_name="outbox")


def create_inbox_applied_index() -> None:
    """The inbox's index by applied_at, by which the relay's housekeeping prunes old entries."""
    op.create_index("ix_inbox_applied_at", "inbox", ["applied_at"])


def drop_inbox_applied_index() -> None:
    op.drop_index("ix_inbox_applied_at", table_name="inbox")


def outbox_published_index_partial() -> None:
    """ix_outbox_published_at over the published rows only (plumbing.outbox's): a new event's insert no longer
    touches it. The prune's `published_at < ?` implies the index's condition on SQLite and PostgreSQL alike."""
    from plumbing.outbox import PUBLISHED

    op.drop_index("ix_outbox_published_at", table_name="outbox")
    create_partial_index("ix_outbox_published_at", "outbox", ["published_at"], PUBLISHED)


def outbox_published_index_full() -> None:
    """outbox_published_index_partial undone: the index over every row again."""
    op.drop_index("ix_outbox_published_at", table_name="outbox")
    op.create_index("ix_outbox_published_at", "outbox", ["published_at"])
