"""An async unit of work in one transaction: committed when it returns, rolled back when it raises, and on a SQLite
file its statements run inline on the caller's thread, in this process's writer order; a read there, or in the
database's reader thread, goes beside the writer."""

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from plumbing.db import Database
from tests.integration.plumbing.writers import writer_holding_the_lock


class Refused(Exception):
    pass


async def test_work_commits_when_it_returns_and_rolls_back_when_it_raises(database_url: str) -> None:
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE ledger (amount INTEGER NOT NULL)"))

        async def pay(session: AsyncSession) -> int:
            await session.execute(text("INSERT INTO ledger VALUES (50)"))
            return int((await session.execute(text("SELECT sum(amount) FROM ledger"))).scalar_one())

        async def pay_then_refuse(session: AsyncSession) -> None:
            await session.execute(text("INSERT INTO ledger VALUES (9750)"))
            raise Refused

        assert await db.write_inline(pay) == 50
        with pytest.raises(Refused):
            await db.write_inline(pay_then_refuse)
        async with db.snapshot() as session:
            assert (await session.execute(text("SELECT sum(amount) FROM ledger"))).scalar_one() == 50
    finally:
        await db.dispose()


async def test_on_a_sqlite_file_the_work_begins_after_the_writer_before_it(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/test.db")
    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE ledger (amount INTEGER NOT NULL)"))
        began: list[bool] = []

        async def pay(session: AsyncSession) -> None:
            began.append(True)
            await session.execute(text("INSERT INTO ledger VALUES (1)"))

        async with writer_holding_the_lock(db):
            second = asyncio.create_task(db.write_inline(pay))
            # Nothing to wait for: the work must not even begin while the async transaction holds the writer lock
            # (waiting in SQLite's busy handler instead would block the loop, and the writer with it, until the
            # timeout).
            await asyncio.sleep(0.1)
            assert began == [] and not second.done()
        await second
        async with db.snapshot() as session:
            assert (await session.execute(text("SELECT sum(amount) FROM ledger"))).scalar_one() == 101
    finally:
        await db.dispose()


@pytest.mark.parametrize("read", ["read_inline", "read_in_thread"])
async def test_a_read_beside_the_writer_sees_one_committed_state_and_does_not_wait_for_it(
    database_url: str, read: str
) -> None:
    db = Database(database_url)
    read_in: list[str] = []
    sum_query = text("SELECT sum(amount) FROM ledger")

    async def inline(session: AsyncSession) -> tuple[int, int]:
        read_in.append(threading.current_thread().name)
        return int((await session.execute(sum_query)).scalar_one()), int(
            (await session.execute(sum_query)).scalar_one()
        )

    def in_thread(session: Session) -> tuple[int, int]:
        read_in.append(threading.current_thread().name)
        return int(session.execute(sum_query).scalar_one()), int(session.execute(sum_query).scalar_one())

    async def totals() -> tuple[int, int]:
        return await (db.read_inline(inline) if read == "read_inline" else db.read_in_thread(in_thread))

    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE ledger (amount INTEGER NOT NULL)"))
            await session.execute(text("INSERT INTO ledger VALUES (7)"))
        async with db.transaction() as writer:
            await writer.execute(text("INSERT INTO ledger VALUES (100)"))
            # The writer holds the write lock and has not committed: the read goes ahead and sees the state before.
            assert await asyncio.wait_for(totals(), timeout=10) == (7, 7)
        assert await totals() == (107, 107)
    finally:
        await db.dispose()
    # read_in_thread on a SQLite file in the database's reader thread (which ends with the database); else in this one.
    on_file = database_url.startswith("sqlite") and ":memory:" not in database_url
    thread = {"read_inline": threading.current_thread().name, "read_in_thread": "sqlite-reader_0"}[read]
    assert set(read_in) == ({thread} if on_file else {threading.current_thread().name})
    assert not any(running.name == "sqlite-reader_0" for running in threading.enumerate())


async def test_on_a_sqlite_file_inline_statements_run_on_the_callers_thread(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/test.db")

    async def thread_running_the_statement(session: AsyncSession) -> str:
        driver = (await (await session.connection()).get_raw_connection()).driver_connection
        # aiosqlite's connection for the service's engine, pysqlite's own for the inline one.
        sqlite = driver if isinstance(driver, sqlite3.Connection) else driver._conn
        # What runs a statement's SQL function is the thread that steps the statement.
        sqlite.create_function("thread_name", 0, lambda: threading.current_thread().name)
        return str((await session.execute(text("SELECT thread_name()"))).scalar_one())

    try:
        async with db.transaction() as session:
            service_loop = await thread_running_the_statement(session)
        written = await db.write_inline(thread_running_the_statement)
        read = await db.read_inline(thread_running_the_statement)
    finally:
        await db.dispose()
    # The service's engine hands each statement to aiosqlite's thread; the inline engine runs it where it is awaited.
    assert service_loop != threading.current_thread().name
    assert written == read == threading.current_thread().name


async def test_on_a_sqlite_file_inline_statements_get_no_spans_of_their_own(tmp_path: Path) -> None:
    """The caller's span covers the transaction: SQLAlchemy's instrumentation (and insert_rows) see it suppressed."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/test.db")

    async def instrumented(session: AsyncSession) -> bool:
        await session.execute(text("SELECT 1"))
        return is_instrumentation_enabled()

    try:
        async with db.transaction() as session:
            assert await instrumented(session)
        assert not await db.write_inline(instrumented)
        assert not await db.read_inline(instrumented)
        assert is_instrumentation_enabled()  # only for the work's own statements
    finally:
        await db.dispose()


async def test_on_a_sqlite_file_the_writes_share_one_kept_connection_the_reads_do_not(tmp_path: Path) -> None:
    """write_inline and run_inline take turns on one connection (no pool check-out per transaction); a failed
    transaction leaves it usable, and a read's deferred snapshot never takes it (its option would stay on it)."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/test.db")

    async def driver_of(session: AsyncSession) -> int:
        return id((await (await session.connection()).get_raw_connection()).driver_connection)

    async def fail(session: AsyncSession) -> None:
        await session.execute(text("INSERT INTO ledger VALUES (1)"))
        raise Refused

    async def add(session: AsyncSession) -> int:
        await session.execute(text("SELECT count(*) FROM ledger"))
        # Still BEGIN IMMEDIATE after a read_inline: the write lock is held from the first statement, a read.
        assert not _can_take_the_write_lock(tmp_path / "test.db")
        await session.execute(text("INSERT INTO ledger VALUES (2)"))
        return id(session.sync_session.connection().connection.driver_connection)

    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE ledger (amount INTEGER NOT NULL)"))
        first = await db.write_inline(driver_of)
        read = await db.read_inline(driver_of)
        with pytest.raises(Refused):
            await db.write_inline(fail)
        after_failure = await db.write_inline(add)
        in_run_inline = db.run_inline(lambda session: id(session.connection().connection.driver_connection))
        assert first == after_failure == await in_run_inline
        assert read != first
        assert _can_take_the_write_lock(tmp_path / "test.db")  # the kept connection holds none between transactions
        async with db.snapshot() as session:
            assert (await session.execute(text("SELECT sum(amount) FROM ledger"))).scalar_one() == 2
    finally:
        await db.dispose()


def _can_take_the_write_lock(path: Path) -> bool:
    other = sqlite3.connect(path, timeout=0.05, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()


async def test_a_kept_connection_left_inside_a_transaction_is_replaced_not_joined(tmp_path: Path) -> None:
    """Were the kept connection left in a transaction (a rollback that failed), a Session on it would join that
    transaction and its commit would commit nothing; the next write gets a fresh connection instead."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/test.db")

    async def add(session: AsyncSession) -> None:
        await session.execute(text("INSERT INTO ledger VALUES (3)"))

    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE ledger (amount INTEGER NOT NULL)"))
        await db.write_inline(add)
        stuck = db._inline_writer
        assert stuck is not None
        stuck.begin()  # as a failed rollback would leave it
        await db.write_inline(add)
        assert stuck.closed and db._inline_writer is not stuck
        async with db.snapshot() as session:
            assert (await session.execute(text("SELECT sum(amount) FROM ledger"))).scalar_one() == 6
    finally:
        await db.dispose()
