"""A synchronous unit of work in one transaction: committed when it returns, rolled back when it raises, and on
SQLite run off the event loop in this process's writer order, alongside the async transactions."""

import asyncio
import threading

import pytest
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from plumbing import db as db_module
from plumbing.db import Database


class Refused(Exception):
    pass


async def test_work_commits_when_it_returns_and_rolls_back_when_it_raises(database_url: str) -> None:
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

        assert await db.run_in_transaction(pay) == 50
        with pytest.raises(Refused):
            await db.run_in_transaction(pay_then_refuse)
        async with db.snapshot() as session:
            assert (await session.execute(text("SELECT sum(amount) FROM ledger"))).scalar_one() == 50
    finally:
        await db.dispose()


async def test_on_sqlite_the_work_runs_off_the_event_loop_after_the_async_writer_before_it(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    begun: list[str] = []

    def recording_begin(connection: Connection) -> None:
        begun.append(threading.current_thread().name)
        original_begin(connection)

    original_begin = db_module._sqlite_begin
    # The writer thread's engine is made on first use, with this BEGIN; the async engine keeps the original.
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/test.db")
    monkeypatch.setattr(db_module, "_sqlite_begin", recording_begin)
    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE ledger (amount INTEGER NOT NULL)"))

        def pay(session: Session) -> None:
            session.execute(text("INSERT INTO ledger VALUES (1)"))

        writing, release = asyncio.Event(), asyncio.Event()

        async def slow_writer() -> None:
            async with db.transaction() as writer:
                await writer.execute(text("INSERT INTO ledger VALUES (100)"))
                writing.set()
                await release.wait()

        first = asyncio.create_task(slow_writer())
        await writing.wait()
        second = asyncio.create_task(db.run_in_transaction(pay))
        # Nothing to wait for: the thread must not even begin while the async transaction holds the writer lock
        # (waiting in SQLite's busy handler instead would serve writers in no order).
        await asyncio.sleep(0.1)
        assert begun == [] and not second.done()
        release.set()
        await asyncio.gather(first, second)

        assert len(begun) == 1 and begun[0] != threading.current_thread().name
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
