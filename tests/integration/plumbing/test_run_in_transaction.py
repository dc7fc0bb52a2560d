"""A synchronous unit of work in one transaction: committed when it returns, rolled back when it raises, and on
SQLite written in this process's writer order alongside the async transactions."""

import asyncio
import threading

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

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


async def test_on_sqlite_the_work_runs_off_the_event_loop_and_waits_for_the_async_writer(tmp_path: object) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/test.db")
    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE ledger (amount INTEGER NOT NULL)"))
        threads: list[str] = []

        def pay(session: Session) -> None:
            threads.append(threading.current_thread().name)
            session.execute(text("INSERT INTO ledger VALUES (1)"))

        writing, release = asyncio.Event(), asyncio.Event()

        async def slow_writer() -> None:
            async with db.transaction() as writer:
                await writer.execute(text("INSERT INTO ledger VALUES (100)"))
                writing.set()
                await release.wait()

        writer = asyncio.create_task(slow_writer())
        await writing.wait()
        paying = asyncio.create_task(db.run_in_transaction(pay))
        await asyncio.sleep(0.05)
        # Queued behind the async transaction on the process's writer lock, not on SQLite's busy handler.
        assert not paying.done() and threads == []
        release.set()
        await asyncio.gather(writer, paying)

        assert threads and threads[0] != threading.current_thread().name
        async with db.snapshot() as session:
            assert (await session.execute(text("SELECT sum(amount) FROM ledger"))).scalar_one() == 101
    finally:
        await db.dispose()
