"""A writer holding this process's SQLite writer lock, for tests of what must wait for it."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text

from plumbing.db import Database


@asynccontextmanager
async def writer_holding_the_lock(db: Database) -> AsyncIterator[None]:
    """Inside the block an async transaction has written to `ledger` (amount 100) and holds the writer lock; it
    commits when the block ends, and the block's end waits for it."""
    writing, release = asyncio.Event(), asyncio.Event()

    async def slow_writer() -> None:
        async with db.transaction() as writer:
            await writer.execute(text("INSERT INTO ledger VALUES (100)"))
            writing.set()
            await release.wait()

    first = asyncio.create_task(slow_writer())
    await writing.wait()
    try:
        yield
    finally:
        release.set()
        await first
