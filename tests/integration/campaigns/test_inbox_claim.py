"""A batch's inbox claim answers the same on every path: the driver's own statement on an inline SQLite session,
SQLAlchemy's elsewhere. Each message is claimed once; what was applied before, or twice in the batch, is not claimed
again; the time applied reads back as written."""

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import Database, sqlite_driver
from services.campaigns import automation_store, store

AT = datetime(2026, 11, 27, 9, 30, 15, 123456, tzinfo=UTC)
CONSUMER = "campaigns-triggers"


@pytest.fixture
def db(campaigns_db: Database) -> Database:
    return campaigns_db


def _paths(db: Database) -> dict[str, Callable[[Callable[[AsyncSession], Awaitable[set[str]]]], Awaitable[set[str]]]]:
    async def in_transaction(work: Callable[[AsyncSession], Awaitable[set[str]]]) -> set[str]:
        async with db.transaction() as session:
            return await work(session)

    return {"inline": db.write_inline, "transaction": in_transaction}


@pytest.mark.parametrize("path", ["inline", "transaction"])
async def test_each_message_is_claimed_once(db: Database, path: str) -> None:
    run = _paths(db)[path]
    used_driver: list[bool] = []

    async def claim(ids: list[str]) -> set[str]:
        async def work(session: AsyncSession) -> set[str]:
            used_driver.append(sqlite_driver(session) is not None)
            return await automation_store.claim_messages(session, CONSUMER, ids, AT)

        return await run(work)

    assert await claim(["m1", "m2", "m3", "m2", "m4", "m5"]) == {"m1", "m2", "m3", "m4", "m5"}
    # A redelivery of some with new ones: only the new ones are claimed.
    assert await claim(["m3", "m6", "m1", "m7"]) == {"m6", "m7"}
    assert await claim(["m6"]) == set()
    assert await automation_store.claim_messages(None, CONSUMER, [], AT) == set()  # type: ignore[arg-type]

    async with db.snapshot() as session:
        rows = (await session.execute(select(store.inbox.c.message_id, store.inbox.c.applied_at))).all()
    assert sorted(message_id for message_id, _ in rows) == ["m1", "m2", "m3", "m4", "m5", "m6", "m7"]
    assert {applied_at.astimezone(UTC) for _, applied_at in rows} == {AT}
    # The driver's statement runs only on an inline session over a SQLite file.
    assert set(used_driver) == {path == "inline" and db.is_sqlite}
