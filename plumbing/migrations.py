"""The body of every service's Alembic env.py: migrate the connection Database.migrate passes in."""

from typing import Any

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


def _idempotency_columns(*, scoped: bool) -> list[sa.Column[Any]]:
    return [
        sa.Column("method", sa.String(100), nullable=False),
        sa.Column("request_id", sa.String(200), nullable=False),
        *([sa.Column("scope", sa.String(100), nullable=False, server_default="")] if scoped else []),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    ]


def _copy_sqlite_idempotency(*, scoped: bool) -> None:
    """SQLite cannot change a primary key in place: the table is copied into one with the new key (a one-time cost)."""
    key = ["method", "request_id", *(["scope"] if scoped else [])]
    op.create_table(
        "_idempotency_new", *_idempotency_columns(scoped=scoped), sa.PrimaryKeyConstraint(*key, name="idempotency_pkey")
    )
    kept = "method, request_id, request_hash, response, created_at"
    op.execute(f"INSERT INTO _idempotency_new ({kept}) SELECT {kept} FROM idempotency")
    op.drop_table("idempotency")
    op.rename_table("_idempotency_new", "idempotency")


def scope_idempotency_requests() -> None:
    """The idempotency table keyed by (method, request_id, scope) (plumbing.idempotency): two API keys' same request_id
    are two requests. Every row kept is unscoped (''), the default, which a replica of the release before still writes
    during a rollout; a retry through the gateway finds such a row when it is exactly its request.

    The new key and ix_idempotency_created_at are built over every row while the table is locked: seconds for a
    million answers, longer for channels' on an installation that kept a row per receipt for a long time; calls that
    record answers wait meanwhile (docs/operations.md, "Upgrading"). From then on the relay prunes answers older than
    idempotency_keep_days."""
    if op.get_bind().dialect.name == "sqlite":
        _copy_sqlite_idempotency(scoped=True)
    else:
        # PostgreSQL adds a column with a constant default without rewriting the table; the new key's index is built
        # once.
        op.add_column("idempotency", sa.Column("scope", sa.String(100), nullable=False, server_default=""))
        op.drop_constraint("idempotency_pkey", "idempotency", type_="primary")
        op.create_primary_key("idempotency_pkey", "idempotency", ["method", "request_id", "scope"])
    # By which the relay's housekeeping forgets answers older than idempotency_keep_days (plumbing.outbox).
    op.create_index("ix_idempotency_created_at", "idempotency", ["created_at"])


def unscope_idempotency_requests() -> None:
    """scope_idempotency_requests undone. The scoped answers are forgotten (two keys' may share a request_id, which
    the old key cannot hold): a retry of one of them after the downgrade is applied again."""
    op.drop_index("ix_idempotency_created_at", table_name="idempotency")
    op.execute("DELETE FROM idempotency WHERE scope <> ''")
    if op.get_bind().dialect.name == "sqlite":
        _copy_sqlite_idempotency(scoped=False)
        return
    op.drop_constraint("idempotency_pkey", "idempotency", type_="primary")
    op.create_primary_key("idempotency_pkey", "idempotency", ["method", "request_id"])
    op.drop_column("idempotency", "scope")
