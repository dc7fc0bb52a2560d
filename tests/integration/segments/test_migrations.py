"""The segments migrations create exactly the tables store.metadata describes, on both backends."""

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from plumbing.db import Database
from services.segments import store
from services.segments.app import MIGRATIONS


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, store.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


async def test_migration_matches_store_metadata(database_url: str) -> None:
    db = Database(database_url)
    try:
        await db.migrate(MIGRATIONS)
        await db.migrate(MIGRATIONS)  # a second start finds nothing to do
        async with db.engine.connect() as connection:
            tables = await connection.run_sync(_tables)
            differences = await connection.run_sync(_differences)
    finally:
        await db.dispose()
    assert tables == set(store.metadata.tables)
    assert {"outbox", "inbox", "idempotency"} <= tables
    assert differences == []
