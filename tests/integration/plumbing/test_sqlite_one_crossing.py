"""SQLite through Database: each statement is one call on aiosqlite's thread, a committed transaction three
(BEGIN, the statement, COMMIT), and everything SQLAlchemy reads back is what the stock driver gives."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiosqlite.core
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError

from plumbing.db import Database
from plumbing.sqlite_async import OneCrossingCursor

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(20), nullable=False, unique=True),
)


@pytest.fixture
def crossings(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The functions handed to aiosqlite's thread, by name, in order."""
    calls: list[str] = []
    original = aiosqlite.core.Connection._execute

    async def counted(self: aiosqlite.core.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.core.Connection, "_execute", counted)
    yield calls


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'one.db'}")
    async with database.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    yield database
    await database.dispose()


async def test_a_statement_is_one_crossing_and_a_committed_transaction_three(
    db: Database, crossings: list[str]
) -> None:
    async with db.transaction() as session:
        await session.execute(text("SELECT 1"))  # the connection is checked out and set up before counting
    crossings.clear()
    async with db.transaction() as session:
        assert (await session.execute(select(func.count()).select_from(items))).scalar_one() == 0
    # BEGIN IMMEDIATE, the SELECT, COMMIT; the pool's rollback-on-return of a committed connection is skipped.
    assert crossings == ["_run", "_run", "commit"]


async def test_rows_rowcounts_and_returning_are_what_the_statements_produced(db: Database) -> None:
    async with db.transaction() as session:
        inserted = await session.execute(
            insert(items).returning(items.c.id, items.c.name), [{"name": "a"}, {"name": "b"}]
        )
        assert sorted(row.name for row in inserted) == ["a", "b"]
        many = await session.execute(insert(items), [{"name": f"n{i}"} for i in range(5)])
        assert many.rowcount == 5
        single = await session.execute(insert(items).values(name="solo"))
        assert single.inserted_primary_key[0] == 8
        changed = await session.execute(update(items).where(items.c.name.like("n%")).values(name=items.c.name + "x"))
        assert changed.rowcount == 5
    async with db.snapshot() as session:
        names = (await session.execute(select(items.c.name).order_by(items.c.id))).scalars().all()
        assert names == ["a", "b", "n0x", "n1x", "n2x", "n3x", "n4x", "solo"]
        assert (await session.execute(select(items.c.id).where(items.c.name == "none"))).first() is None


async def test_a_failed_statement_raises_the_sqlalchemy_error_and_its_transaction_rolls_back(db: Database) -> None:
    async with db.transaction() as session:
        await session.execute(insert(items).values(name="taken"))
    with pytest.raises(IntegrityError, match="UNIQUE constraint failed"):
        async with db.transaction() as session:
            await session.execute(insert(items).values(name="fresh"))
            await session.execute(insert(items).values(name="taken"))
    with pytest.raises(OperationalError, match="no such table"):
        async with db.snapshot() as session:
            await session.execute(text("SELECT * FROM missing"))
    async with db.snapshot() as session:
        names = (await session.execute(select(items.c.name))).scalars().all()
    assert names == ["taken"]  # "fresh" went with its transaction's rollback


async def test_every_sqlite_engine_database_builds_uses_the_one_crossing_cursor(db: Database) -> None:
    async with db.sessions() as session:
        connection = await session.connection()
        raw = await connection.get_raw_connection()
        assert raw.dbapi_connection is not None
        assert raw.dbapi_connection._cursor_cls is OneCrossingCursor  # type: ignore[attr-defined]
