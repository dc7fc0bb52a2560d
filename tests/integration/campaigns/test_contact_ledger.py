"""The contact ledger: the per-person lock that makes cap checks race-safe across processes (on a real
PostgreSQL), and withdrawal versus dispatch of one outreach (on both databases).

Two release pages in two transactions (as two campaigns replicas would run them) touch the same
person: the second waits for the first to commit, then sees its ledger entry. SQLite needs no such
lock: every write transaction holds the database's write lock from BEGIN IMMEDIATE.
"""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import Database
from services.campaigns import store
from services.campaigns.app import MIGRATIONS
from services.campaigns.caps import LOOKBACK
from tests.integration.campaigns.harness import campaign_row, outreach_row
from tests.waiting import eventually

NOW = datetime.now(UTC)


@pytest.fixture
async def db(postgres_url: str) -> AsyncIterator[Database]:
    database = Database(postgres_url)
    await database.migrate(MIGRATIONS)
    yield database
    await database.dispose()


async def _outreach(db: Database, campaign_id: str, profile_id: str) -> None:
    """A campaign, its outreach and nothing else: what the ledger's join needs."""
    async with db.transaction() as session:
        if await store.get_campaign(session, "cmp_ledger") is None:
            await store.insert_campaign(session, campaign_row("cmp_ledger", "LEDG", NOW))
        await store.insert_outreaches(session, [outreach_row(campaign_id, "cmp_ledger", profile_id, NOW)])


def _contact(campaign_id: str, profile_id: str) -> dict[str, object]:
    return {
        "campaign_id": campaign_id,
        "profile_id": profile_id,
        "campaign_key": "cmp_ledger",
        "channel": "EMAIL",
        "category": 1,
        "contacted_at": NOW,
        "priority": 0,
        "offer_value_minor": 0,
        "launched_at": NOW,
    }


def _rows(session: AsyncSession, *contacts: dict[str, object]) -> list[tuple[object, ...]]:
    """Ledger entries as store.insert_contacts takes them: driver values in store.PAGE_CONTACT_COLUMNS' order."""
    values = store.DriverValues(session)
    return [
        tuple(
            values.time(contact[c]) if isinstance(contact[c], datetime) else contact[c]
            for c in store.PAGE_CONTACT_COLUMNS
        )
        for contact in contacts
    ]


async def _waiting_on_an_advisory_lock(db: Database) -> bool:
    async with db.transaction() as session:
        waiting = await session.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'")
        )
        return bool(waiting.scalar_one())


async def test_a_second_page_waits_for_the_first_and_then_sees_its_contact(db: Database) -> None:
    await _outreach(db, "LEDG-NOV-T00-0001", "cust-1")
    first_locked, first_may_commit = asyncio.Event(), asyncio.Event()
    seen_by_second: list[str] = []

    async def first_page() -> None:
        async with db.transaction() as session:
            await store.lock_people(session, ["cust-9", "cust-1"])
            assert not await store.recent_contacts(session, ["cust-1"], NOW - timedelta(days=1))
            await store.insert_contacts(session, _rows(session, _contact("LEDG-NOV-T00-0001", "cust-1")))
            first_locked.set()
            await first_may_commit.wait()

    async def second_page() -> None:
        await first_locked.wait()
        async with db.transaction() as session:
            await store.lock_people(session, ["cust-1"])
            rows = await store.recent_contacts(session, ["cust-1"], NOW - timedelta(days=1))
            seen_by_second.extend(row.campaign_id for row in rows)

    first = asyncio.create_task(first_page())
    second = asyncio.create_task(second_page())
    await eventually(lambda: _waiting_on_an_advisory_lock(db))
    assert not second.done() and not seen_by_second
    first_may_commit.set()
    await asyncio.gather(first, second)
    # Read after the lock was granted: the first page's contact counts against the second's caps.
    assert seen_by_second == ["LEDG-NOV-T00-0001"]


async def test_other_people_do_not_wait(db: Database) -> None:
    first_locked, first_may_commit = asyncio.Event(), asyncio.Event()

    async def first_page() -> None:
        async with db.transaction() as session:
            await store.lock_people(session, ["cust-1"])
            first_locked.set()
            await first_may_commit.wait()

    first = asyncio.create_task(first_page())
    await first_locked.wait()
    async with db.transaction() as session:
        await store.lock_people(session, ["cust-2", "cust-3"])
    first_may_commit.set()
    await first


async def test_a_transaction_asks_only_for_the_locks_it_does_not_hold(db: Database) -> None:
    asked: list[list[int]] = []

    def record(conn: object, cursor: object, statement: str, parameters: object, context: object, many: bool) -> None:
        if "pg_advisory_xact_lock" in statement:
            asked.append(list(parameters[0]))  # type: ignore[index]

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    try:
        async with db.sessions() as session:
            async with session.begin():
                await store.lock_people(session, ["cust-1", "cust-2"])
                await store.lock_people(session, ["cust-2", "cust-1"])  # a trigger batch's gate, after the batch
                await store.lock_people(session, ["cust-1", "cust-3"])
            # The same session's next transaction holds none of them (advisory locks end with their transaction).
            async with session.begin():
                await store.lock_people(session, ["cust-1"])
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", record)
    key = store._person_lock_key
    assert asked == [sorted([key("cust-1"), key("cust-2")]), [key("cust-3")], [key("cust-1")]]


async def test_an_outreach_is_either_dispatched_or_withdrawn_never_both(campaigns_db: Database) -> None:
    for campaign_id in ("LEDG-NOV-T00-0001", "LEDG-NOV-T00-0002"):
        await _outreach(campaigns_db, campaign_id, f"cust-{campaign_id[-1]}")
        async with campaigns_db.transaction() as session:
            await store.insert_contacts(session, _rows(session, _contact(campaign_id, f"cust-{campaign_id[-1]}")))
    later = NOW + timedelta(minutes=1)
    async with campaigns_db.transaction() as session:
        assert await store.mark_dispatched(session, ["LEDG-NOV-T00-0001"], NOW) == {"LEDG-NOV-T00-0001"}
        # Dispatched first: a better campaign can no longer take its place (the page is retried).
        assert not await store.withdraw_outreaches(session, ["LEDG-NOV-T00-0001"], later)
        withdrawn = await store.withdraw_outreaches(session, ["LEDG-NOV-T00-0002"], later)
        assert [(w.campaign_id, w.profile_id, w.run_id) for w in withdrawn] == [
            ("LEDG-NOV-T00-0002", "cust-2", "run_1")
        ]
        # Withdrawn first: the dispatch page leaves it out, and so does the next one.
        assert await store.mark_dispatched(session, ["LEDG-NOV-T00-0002"], later) == set()
        assert not await store.dispatchable(session, "run_1", 10, later, 10)
        assert await store.undispatched(session, "run_1") == 0
        # Off the ledger: it no longer counts against anyone's caps.
        contacts = await store.recent_contacts(session, ["cust-1", "cust-2"], NOW - timedelta(days=1))
        assert [row.campaign_id for row in contacts] == ["LEDG-NOV-T00-0001"]


async def test_entries_older_than_any_caps_period_are_pruned(campaigns_db: Database) -> None:
    await _outreach(campaigns_db, "LEDG-NOV-T00-0001", "cust-1")
    await _outreach(campaigns_db, "LEDG-NOV-T00-0002", "cust-2")
    old = {**_contact("LEDG-NOV-T00-0001", "cust-1"), "contacted_at": NOW - LOOKBACK - timedelta(hours=1)}
    async with campaigns_db.transaction() as session:
        await store.insert_contacts(session, _rows(session, old, _contact("LEDG-NOV-T00-0002", "cust-2")))
    async with campaigns_db.transaction() as session:
        assert await store.prune_contacts(session, NOW - LOOKBACK) == 1
        kept = await store.recent_contacts(session, ["cust-1", "cust-2"], NOW - timedelta(days=30))
        assert [row.campaign_id for row in kept] == ["LEDG-NOV-T00-0002"]
        # The outreach itself stays: only its place in the caps' ledger is gone.
        assert await store.get_outreach(session, "LEDG-NOV-T00-0001") is not None
