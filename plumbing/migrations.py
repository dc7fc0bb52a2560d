"""The body of every service's Alembic env.py: migrate the connection Database.migrate passes in."""

from alembic import context
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
