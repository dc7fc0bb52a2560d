"""A kept PostgreSQL connection: statements commit on their own, one backend serves every write, and a lost one is
replaced by the next write."""

from datetime import UTC, datetime

import pytest
from opentelemetry import trace
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from plumbing.db import Database, transient_failure
from plumbing.outbox import Outbox
from services.channels import store
from services.channels.app import MIGRATIONS
from services.channels.delivery import DispatchAction
from services.channels.ledger import Intent, Ledger
from tests.integration.channels.support import new_campaign_id


async def test_each_statement_commits_on_its_own_on_one_backend_kept_between_writes(postgres_url: str) -> None:
    db = Database(postgres_url)
    kept = db.keep_connection()
    try:
        async with kept.use() as connection:
            first = (await connection.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
            await connection.exec_driver_sql("CREATE TABLE notes (body text)")
            await connection.exec_driver_sql("INSERT INTO notes VALUES ('kept')")
        async with db.snapshot() as session:
            assert (await session.execute(text("SELECT body FROM notes"))).scalars().all() == ["kept"]
        async with kept.use() as connection:
            assert (await connection.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one() == first
    finally:
        await db.dispose()


async def test_a_write_after_the_server_ended_the_connection_runs_on_a_new_one(postgres_url: str) -> None:
    db = Database(postgres_url)
    kept = db.keep_connection()
    try:
        async with kept.use() as connection:
            lost = (await connection.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
        async with db.transaction() as session:
            await session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": lost})

        with pytest.raises(DBAPIError) as failed:
            async with kept.use() as connection:
                await connection.exec_driver_sql("SELECT 1")
        assert transient_failure(failed.value) == "the database connection was lost"
        async with kept.use() as connection:
            assert (await connection.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one() != lost
    finally:
        await db.dispose()


async def test_the_ledger_writes_again_on_a_new_connection_when_its_own_was_lost(postgres_url: str) -> None:
    db = Database(postgres_url)
    await db.migrate(MIGRATIONS)
    ledger = Ledger(db, Outbox(store.outbox), trace.get_tracer("test"))
    now = datetime.now(UTC)
    try:
        assert (await ledger.claim(Intent(new_campaign_id(), "CHANNEL_SMS", "p", False, now))).action is (
            DispatchAction.SEND
        )
        async with db.transaction() as session:
            await session.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )

        claim = await ledger.claim(Intent(new_campaign_id(), "CHANNEL_SMS", "p", False, now))

        assert claim.action is DispatchAction.SEND
    finally:
        await db.dispose()
