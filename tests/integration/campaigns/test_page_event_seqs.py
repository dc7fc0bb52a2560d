"""The outbox seqs a page's events were given, as store.insert_page tells them to a trigger batch for the relay's
hand-over: exactly the seqs the rows have, page after page in one transaction, whatever else the transaction inserts
between them; and none where the driver cannot tell (a transaction through aiosqlite, PostgreSQL)."""

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import Database
from services.campaigns import store
from services.campaigns.trigger_handler import _seq_before

AT = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)


def _events(prefix: str, count: int) -> list[tuple[object, ...]]:
    return [
        (
            f"{prefix}-{n}",
            "xsell.campaigns.dispatch_requested",
            b"payload",
            json.dumps({"Nats-Msg-Id": f"{prefix}-{n}"}),
            AT,
        )
        for n in range(count)
    ]


Pages = tuple[range | None, range | None, range | None]


def _paths(db: Database) -> dict[str, Callable[[Callable[[AsyncSession], Awaitable[Pages]]], Awaitable[Pages]]]:
    async def in_transaction(work: Callable[[AsyncSession], Awaitable[Pages]]) -> Pages:
        async with db.transaction() as session:
            return await work(session)

    return {"inline": db.write_inline, "transaction": in_transaction}


@pytest.mark.parametrize("path", ["inline", "transaction"])
async def test_pages_report_the_seqs_their_events_were_given(campaigns_db: Database, path: str) -> None:
    db = campaigns_db
    # Rows before, so the seqs do not start at 1.
    async with db.transaction() as session:
        await store.insert_page(session, [], _events("earlier", 3))

    async def two_pages(session: AsyncSession) -> Pages:
        first = await store.insert_page(session, [], _events("a", 4))
        # Another table's insert between the pages (the contact ledger's, the inbox's in a trigger batch).
        await session.execute(insert(store.inbox).values(consumer="c", message_id="m", applied_at=AT))
        second = await store.insert_page(session, [], _events("b", 2))
        nothing = await store.insert_page(session, [], [])
        return first, second, nothing

    first, second, nothing = await _paths(db)[path](two_pages)
    assert nothing is None
    if path != "inline" or not db.is_sqlite:
        assert (first, second) == (None, None)
        assert _seq_before([first, second], 6) is None
        return
    async with db.snapshot() as session:
        rows = (await session.execute(select(store.outbox.c.event_id, store.outbox.c.seq))).all()
    seqs = dict(rows)
    assert first is not None and second is not None
    assert list(first) == [seqs[f"a-{n}"] for n in range(4)]
    assert list(second) == [seqs[f"b-{n}"] for n in range(2)]
    assert _seq_before([first, second], 6) == seqs["a-0"] - 1 == seqs["earlier-2"]


def test_the_seq_before_is_given_only_for_one_unbroken_run_of_exactly_the_events() -> None:
    assert _seq_before([range(11, 15), range(15, 17)], 6) == 10
    assert _seq_before([range(11, 15)], 4) == 10
    assert _seq_before([range(11, 15), range(16, 18)], 6) is None  # a row of someone else's between the pages
    assert _seq_before([range(11, 15), None], 6) is None  # a page the driver could not tell
    assert _seq_before([range(11, 15)], 5) is None  # an event not in any page
    assert _seq_before([], 0) is None


async def test_a_page_of_few_rows_and_one_of_many_write_the_same_rows(campaigns_db: Database) -> None:
    # On PostgreSQL, under store.COPY_MIN_ROWS rows one pipelined INSERT, from it a COPY; SQLite has one path.
    many = store.COPY_MIN_ROWS
    async with campaigns_db.transaction() as session:
        await store.insert_page(session, [], _events("few", 3))
        await store.insert_page(session, [], _events("many", many))
    async with campaigns_db.snapshot() as session:
        rows = (await session.execute(select(store.outbox.c.event_id, store.outbox.c.payload))).all()
    assert sorted(rows) == sorted(
        [(f"few-{n}", b"payload") for n in range(3)] + [(f"many-{n}", b"payload") for n in range(many)]
    )
