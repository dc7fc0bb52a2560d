"""A synchronous read in one snapshot: on a SQLite file one call to a reader thread of its own, beside the writer."""

import asyncio
import threading

from sqlalchemy import text
from sqlalchemy.orm import Session

from plumbing.db import Database


async def test_a_read_in_thread_sees_one_committed_state_and_does_not_wait_for_the_writer(database_url: str) -> None:
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE ledger (amount INTEGER NOT NULL)"))
            await session.execute(text("INSERT INTO ledger VALUES (7)"))
        read_in: list[str] = []

        def total_twice(session: Session) -> tuple[int, int]:
            read_in.append(threading.current_thread().name)
            first = int(session.execute(text("SELECT sum(amount) FROM ledger")).scalar_one())
            return first, int(session.execute(text("SELECT sum(amount) FROM ledger")).scalar_one())

        async with db.transaction() as writer:
            await writer.execute(text("INSERT INTO ledger VALUES (100)"))
            # The writer holds the write lock and has not committed: the read goes ahead and sees the state before.
            assert await asyncio.wait_for(db.read_in_thread(total_twice), timeout=10) == (7, 7)
        assert await db.read_in_thread(total_twice) == (107, 107)
    finally:
        await db.dispose()
    on_file = database_url.startswith("sqlite") and ":memory:" not in database_url
    assert (set(read_in) == {"sqlite-reader_0"}) == on_file
    # Disposed: the reader thread has ended.
    assert not any(thread.name.startswith("sqlite-reader") for thread in threading.enumerate())
