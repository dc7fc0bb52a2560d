"""A synchronous unit of work in one transaction: committed when it returns, rolled back when it raises, and on
SQLite run in this process's writer order, alongside the async transactions: in the database's writer thread
(run_in_transaction) or on the loop's thread (run_inline)."""

import asyncio
import threading

import pytest
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from plumbing import db as db_module
from plumbing.db import Database
from tests.integration.plumbing.writers import writer_holding_the_lock


class Refused(Exception):
    pass


@pytest.mark.parametrize("run", ["run_in_transaction", "run_inline"])
async def test_work_commits_when_it_returns_and_rolls_back_when_it_raises(database_url: str, run: str) -> None:
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE ledger (amount INTEGER NOT NULL)"))

        def pay(session: Session) -> int:
            session.execute(text("INSERT INTO ledger VALUES (50)"))
            return int(session.execute(text("SELECT sum(amount) FROM ledger")).scalar_one())

        def pay_then_refuse(session: Session) -> None:
            session.execute(text("INSERT INTO ledger VALUES (9750)"))
            raise Refused

        assert await getattr(db, run)(pay) == 50
        with pytest.raises(Refused):
            await getattr(db, run)(pay_then_refuse)
        async with db.snapshot() as session:
            assert (await session.execute(text("SELECT sum(amount) FROM ledger"))).scalar_one() == 50
    finally:
        await db.dispose()


@pytest.mark.parametrize("run", ["run_in_transaction", "run_inline"])
async def test_on_sqlite_the_work_begins_after_the_async_writer_before_it_in_its_thread(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch, run: str
) -> None:
    begun: list[str] = []

    def recording_begin(connection: Connection) -> None:
        begun.append(threading.current_thread().name)
        original_begin(connection)

    original_begin = db_module._sqlite_begin
    # The synchronous engines are made on first use, with this BEGIN; the async engine keeps the original.
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/test.db")
    monkeypatch.setattr(db_module, "_sqlite_begin", recording_begin)
    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE ledger (amount INTEGER NOT NULL)"))

        def pay(session: Session) -> None:
            session.execute(text("INSERT INTO ledger VALUES (1)"))

        async with writer_holding_the_lock(db):
            second = asyncio.create_task(getattr(db, run)(pay))
            # Nothing to wait for: the work must not even begin while the async transaction holds the writer lock
            # (waiting in SQLite's busy handler instead would serve writers in no order, and inline would block
            # the loop, and the writer with it, until the timeout).
            await asyncio.sleep(0.1)
            assert begun == [] and not second.done()
        await second

        # run_in_transaction in the database's writer thread; run_inline here, on the loop's thread.
        assert len(begun) == 1 and (begun[0] == threading.current_thread().name) == (run == "run_inline")
        async with db.snapshot() as session:
            assert (await session.execute(text("SELECT sum(amount) FROM ledger"))).scalar_one() == 101
    finally:
        await db.dispose()


async def test_on_a_sqlite_file_the_threads_transactions_open_no_instrumentation_spans(tmp_path: object) -> None:
    # SQLAlchemy's instrumentation checks this flag before its "connect" span and each statement's span: in these
    # threads there is no current span, so each transaction would start a root span of its own.
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/test.db")
    instrumented: list[bool] = []

    def work(session: Session) -> None:
        instrumented.append(is_instrumentation_enabled())
        session.execute(text("SELECT 1"))

    try:
        await db.run_in_transaction(work)
        await db.read_in_thread(work)
    finally:
        await db.dispose()
    assert instrumented == [False, False]
