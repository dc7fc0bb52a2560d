"""Two transactions recording channels' receipts for the same outreaches on PostgreSQL take the outreaches' row locks
in one order (campaign ID), whatever the columns: a fetch that sets one outreach's delivered_at and another's sent_at
never holds one row while it waits for the other, so a concurrent transaction cannot deadlock with it."""

import asyncio
from datetime import UTC, datetime

from sqlalchemy import insert, select, text, update

from plumbing.bus import Delivery
from plumbing.db import Database
from plumbing.errors import InvalidArgument
from services.campaigns import store
from services.campaigns.app import MIGRATIONS
from services.campaigns.consumers import OutreachSignals
from tests.waiting import eventually
from xsell.channels.v1 import events_pb2 as channel_events
from xsell.channels.v1 import resources_pb2 as channel_resources

AT = datetime(2026, 11, 14, 10, 0, tzinfo=UTC)


async def _seed(db: Database, campaign_ids: list[str]) -> None:
    async with db.transaction() as session:
        # The outreaches alone: their campaign is not what this test is about.
        await session.execute(text("SET LOCAL session_replication_role = replica"))
        await session.execute(
            insert(store.outreaches),
            [
                {
                    "campaign_id": campaign_id,
                    "campaign_key": "cmp_lock_order",
                    "run_id": "run_1",
                    "profile_id": f"prf_{campaign_id}",
                    "channel": "sms",
                    "trigger_code": "T01",
                    "offer_product_code": "PL",
                    "labels": [],
                    "category": 1,
                    "created_at": AT,
                }
                for campaign_id in campaign_ids
            ],
        )


async def _waiting_for_a_lock(db: Database) -> bool:
    async with db.transaction() as session:
        query = text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return bool((await session.execute(query)).scalar_one())


async def test_a_fetch_of_receipts_locks_its_outreaches_in_campaign_id_order(postgres_url: str) -> None:
    db = Database(postgres_url)
    await db.migrate(MIGRATIONS)
    try:
        await _seed(db, ["cmp_a", "cmp_b"])
        async with db.transaction() as holder:
            # Another transaction (the engagement consumer's fetch, another replica's) has cmp_a's row.
            await holder.execute(
                update(store.outreaches).where(store.outreaches.c.campaign_id == "cmp_a").values(opened_at=AT)
            )

            async def fetch() -> None:
                async with db.transaction() as session:
                    await store.record_signals(
                        session, [("cmp_a", "sent_at", AT, ""), ("cmp_b", "delivered_at", AT, "")]
                    )

            task = asyncio.create_task(fetch())
            await eventually(lambda: _waiting_for_a_lock(db))
            # Waiting for cmp_a, the fetch must not hold cmp_b: this update would then deadlock with it.
            await holder.execute(
                update(store.outreaches).where(store.outreaches.c.campaign_id == "cmp_b").values(clicked_at=AT)
            )
        await task
    finally:
        await db.dispose()


async def test_a_receipt_whose_time_is_no_time_is_refused_alone_and_the_fetch_recorded(postgres_url: str) -> None:
    db = Database(postgres_url)
    await db.migrate(MIGRATIONS)
    try:
        await _seed(db, ["cmp_ok"])
        far = channel_events.DeliveryUpdated(campaign_id="cmp_far", state=channel_resources.DELIVERY_STATE_SENT)
        far.occur_time.seconds = 2**40  # past year 9999
        sent = channel_events.DeliveryUpdated(campaign_id="cmp_ok", state=channel_resources.DELIVERY_STATE_SENT)
        sent.occur_time.FromDatetime(AT)
        outcomes = await OutreachSignals(db).on_delivery_batch(
            [(far, Delivery("m1", "subject", 1)), (sent, Delivery("m2", "subject", 1))]
        )
        assert isinstance(outcomes[0], InvalidArgument) and "occur_time" in str(outcomes[0])
        assert outcomes[1] is None
        async with db.snapshot() as session:
            recorded = await session.execute(
                select(store.outreaches.c.sent_at).where(store.outreaches.c.campaign_id == "cmp_ok")
            )
            assert recorded.scalar_one() == AT
    finally:
        await db.dispose()
