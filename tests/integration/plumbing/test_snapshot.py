"""A snapshot read sees one committed state however many statements it runs, and is read-only."""

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from plumbing.db import Database
from tests.integration.plumbing.writers import writer_holding_the_lock


async def test_statements_in_a_snapshot_do_not_see_commits_made_between_them(database_url: str) -> None:
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE ledger (amount INTEGER NOT NULL)"))
            await session.execute(text("INSERT INTO ledger VALUES (50)"))
        async with db.snapshot() as reader:
            before = (await reader.execute(text("SELECT sum(amount) FROM ledger"))).scalar_one()
            # A writer commits between the snapshot's two statements: under READ COMMITTED the second would see it.
            async with db.transaction() as writer:
                await writer.execute(text("INSERT INTO ledger VALUES (9750)"))
            after = (await reader.execute(text("SELECT sum(amount), count(*) FROM ledger"))).one()
        assert (before, tuple(after)) == (50, (50, 1))
        async with db.snapshot() as reader:
            assert (await reader.execute(text("SELECT sum(amount) FROM ledger"))).scalar_one() == 9800
    finally:
        await db.dispose()


async def test_a_snapshot_refuses_writes_and_leaves_its_connection_writable(database_url: str) -> None:
    db = Database(database_url, pool_size=1)
    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE ledger (amount INTEGER NOT NULL)"))
        if db.is_sqlite:
            pytest.skip("SQLite has no read-only transaction; the snapshot is read-only by convention there")
        with pytest.raises(DBAPIError, match="read-only"):
            async with db.snapshot() as reader:
                await reader.execute(text("INSERT INTO ledger VALUES (1)"))
        # The pooled connection goes back READ COMMITTED and writable for the next transaction.
        for _ in range(3):
            async with db.transaction() as session:
                await session.execute(text("INSERT INTO ledger VALUES (1)"))
                level = (await session.execute(text("SHOW transaction_isolation"))).scalar_one()
            assert level == "read committed"
    finally:
        await db.dispose()


async def test_a_snapshot_does_not_queue_behind_a_writer_on_sqlite(tmp_path: object) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/test.db")
    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE ledger (amount INTEGER NOT NULL)"))
            await session.execute(text("INSERT INTO ledger VALUES (50)"))
        # The writer holds this process's write lock and SQLite's: the read is answered from the last commit.
        async with writer_holding_the_lock(db), db.snapshot() as reader:
            assert (await reader.execute(text("SELECT sum(amount) FROM ledger"))).scalar_one() == 50
    finally:
        await db.dispose()
