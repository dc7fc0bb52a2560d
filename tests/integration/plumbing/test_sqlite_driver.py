"""The driver's own connection under an inline transaction: found once per transaction, and the finding leaves
nothing behind for the cycle collector (a service runs hundreds of these transactions a second)."""

import gc
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import Database, run_on_driver, sqlite_driver


@contextmanager
def cyclic_garbage() -> Iterator[list[object]]:
    """What the collector finds unreachable in the block (only reference cycles get there)."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    found: list[object] = []
    try:
        yield found
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def test_the_driver_connection_is_found_once_and_leaves_no_cycle(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/driver.db")
    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE ledger (amount INTEGER NOT NULL)"))
        found: list[sqlite3.Connection | None] = []

        async def pay(session: AsyncSession) -> None:
            driver = sqlite_driver(session)
            assert driver is not None
            found.append(driver)
            found.append(sqlite_driver(session))
            run_on_driver(driver, "INSERT INTO ledger VALUES (?)", (50,))

        await db.write_inline(pay)  # the engine's first connection and its caches, before counting
        with cyclic_garbage() as garbage:
            for _ in range(20):
                await db.write_inline(pay)
        # SQLAlchemy's objects only: anything else in the process (another thread's exporter) may make its own cycles.
        assert [type(o).__qualname__ for o in garbage if type(o).__module__.startswith("sqlalchemy")] == []
        assert all(isinstance(driver, sqlite3.Connection) for driver in found)
        assert all(found[i] is found[i + 1] for i in range(0, len(found), 2))
        async with db.snapshot() as session:
            assert (await session.execute(text("SELECT count(*) FROM ledger"))).scalar_one() == 21
    finally:
        await db.dispose()
