"""Each process's Alembic migrations create exactly the tables its store describes, types included, on SQLite and
PostgreSQL; a second start finds nothing to do."""

from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, inspect
from sqlalchemy.engine import Connection

from plumbing.db import Database

PROCESSES = ["services.segments", "services.campaigns", "services.channels", "services.attribution", "gateway"]
# Every service publishes through the outbox and answers retries from the idempotency table (channels skips
# redelivered requests through its delivery ledger, the others through an inbox).
RELIABILITY_TABLES = {"outbox", "idempotency"}


def _differences(metadata: MetaData) -> Any:
    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    return compare


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


@pytest.mark.parametrize("process", PROCESSES)
async def test_migrations_create_exactly_the_store_tables(database_url: str, process: str) -> None:
    store = import_module(f"{process}.store")
    migrations: Path = import_module(f"{process}.app").MIGRATIONS
    db = Database(database_url)
    try:
        await db.migrate(migrations)
        await db.migrate(migrations)  # a second start finds nothing to do
        async with db.engine.connect() as connection:
            tables = await connection.run_sync(_tables)
            differences = await connection.run_sync(_differences(store.metadata))
    finally:
        await db.dispose()
    assert tables == set(store.metadata.tables)
    if process.startswith("services."):
        assert tables >= RELIABILITY_TABLES
    assert differences == []
