"""plumbing.sqlite_async.insert_rows: every row in order, in the caller's transaction, whatever the count (full
multi-row statements, the rest by executemany, fewer rows per statement when SQLite binds fewer values)."""

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, select

from plumbing import sqlite_async
from plumbing.db import Database

metadata = MetaData()
rows_table = Table(
    "rows",
    metadata,
    Column("n", Integer, primary_key=True, autoincrement=False),
    Column("name", String(20), nullable=True),
    Column("payload", LargeBinary, nullable=True),
)
COLUMNS = ("n", "name", "payload")


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'rows.db'}")
    async with database.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    yield database
    await database.dispose()


def _rows(first: int, count: int) -> list[tuple[Any, ...]]:
    return [(n, None if n % 7 == 0 else f"r{n}", bytes([n % 256]) * (n % 5)) for n in range(first, first + count)]


async def _insert(db: Database, rows: list[tuple[Any, ...]]) -> None:
    async with db.transaction() as session:
        connection = await session.connection()
        driver = (await connection.get_raw_connection()).driver_connection
        assert isinstance(driver, aiosqlite.Connection)
        await sqlite_async.insert_rows(driver, "rows", COLUMNS, rows)


async def _stored(db: Database) -> list[tuple[Any, ...]]:
    async with db.snapshot() as session:
        return [tuple(row) for row in (await session.execute(select(rows_table).order_by(rows_table.c.n))).all()]


@pytest.mark.parametrize("count", [1, 499, 500, 501, 1_000, 1_234])
async def test_every_row_is_inserted_as_given(db: Database, count: int) -> None:
    rows = _rows(0, count)

    await _insert(db, rows)

    assert await _stored(db) == rows


async def test_statements_bind_no_more_values_than_sqlite_allows(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    statements: list[int] = []
    original = sqlite_async._values_statement

    def recorded(table: str, columns: tuple[str, ...], count: int) -> str:
        statements.append(count)
        return original(table, columns, count)

    monkeypatch.setattr(sqlite_async, "_values_statement", recorded)
    rows = _rows(0, 1_000)

    async with db.transaction() as session:
        connection = await session.connection()
        driver = (await connection.get_raw_connection()).driver_connection
        # As an old SQLite (before 3.32): 999 values at most, so 333 rows of three columns per statement.
        driver._conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        await sqlite_async.insert_rows(driver, "rows", COLUMNS, rows)

    assert statements == [333, 1] and await _stored(db) == rows


async def test_a_failing_row_rolls_the_whole_transaction_back(db: Database) -> None:
    await _insert(db, _rows(0, 10))

    with pytest.raises(sqlite3.IntegrityError):
        async with db.transaction() as session:
            await session.execute(rows_table.insert().values(n=1_000, name="before"))
            connection = await session.connection()
            driver = (await connection.get_raw_connection()).driver_connection
            # 600 new rows, then one that already exists (in the executemany rest).
            await sqlite_async.insert_rows(driver, "rows", COLUMNS, [*_rows(2_000, 600), *_rows(5, 1)])

    assert await _stored(db) == _rows(0, 10)
