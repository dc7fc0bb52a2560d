"""A fetch of engagement with a reply in it writes the views' rollup rows in one statement, in key order, on
PostgreSQL: the reply's lead first in a statement of its own held its rollup row while the fetch's other rows waited,
so a concurrent transaction over the same rows (the delivery consumer's fetch, another replica's) deadlocked with it."""

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import text

from plumbing.bus import Delivery
from plumbing.db import Database
from plumbing.ids import new_id
from plumbing.outbox import Inbox
from services.attribution import store
from services.attribution.app import MIGRATIONS
from services.attribution.consumers import Handlers
from services.attribution.ledger import Ledger
from services.attribution.revenue import CostModel
from tests.integration.attribution.seeding import SENT_AT, ts
from tests.waiting import eventually
from xsell.campaigns.v1 import events_pb2 as campaign_events
from xsell.campaigns.v1 import resources_pb2 as campaigns_pb2
from xsell.channels.v1 import events_pb2 as channel_events
from xsell.channels.v1 import resources_pb2 as channels_pb2
from xsell.type.v1 import channel_pb2

LATER = SENT_AT + timedelta(hours=1)


@pytest.fixture
async def handlers(postgres_url: str) -> AsyncIterator[tuple[Handlers, Database]]:
    db = Database(postgres_url)
    await db.migrate(MIGRATIONS)
    ledger = Ledger(CostModel({"sms": 25}, 15, 650), "INR")
    yield Handlers(db, Inbox(store.inbox), ledger, TracerProvider().get_tracer("test")), db
    await db.dispose()


def _delivery() -> Delivery:
    return Delivery(new_id("msg_"), "subject", 1)


def _created(campaign_id: str, campaign_key: str) -> campaign_events.OutreachCreated:
    return campaign_events.OutreachCreated(
        outreach=campaigns_pb2.Outreach(
            campaign_id=campaign_id,
            campaign_key=campaign_key,
            profile_id=f"prf_{campaign_id[-4:]}",
            channel=channel_pb2.CHANNEL_SMS,
            trigger_code="T06",
            offer=campaigns_pb2.Offer(product_code="MSME_WC_TOPUP"),
            create_time=ts(SENT_AT),
        ),
    )


def _engaged(campaign_id: str, kind: int) -> channel_events.EngagementRecorded:
    return channel_events.EngagementRecorded(
        event_id=new_id("evt_"),
        campaign_id=campaign_id,
        kind=kind,
        occur_time=ts(LATER),  # type: ignore[arg-type]
    )


async def _waiting_for_a_lock(db: Database) -> bool:
    async with db.transaction() as session:
        query = text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return bool((await session.execute(query)).scalar_one())


async def test_a_reply_in_a_fetch_takes_its_rollup_row_in_key_order(handlers: tuple[Handlers, Database]) -> None:
    handler, db = handlers
    outreaches = {"CSELL-NOV-T06-0001": "cmp_a", "CSELL-NOV-T06-0002": "cmp_b"}
    created = [(_created(campaign_id, key), _delivery()) for campaign_id, key in outreaches.items()]
    assert await handler.on_outreach_created_batch(created) == [None, None]
    async with db.transaction() as session:
        locked = await store.lock_outreaches(session, set(outreaches))
    first, second = (locked[campaign_id].outreach for campaign_id in outreaches)
    rollup = handler.ledger.rollup
    async with db.transaction() as other:
        # Another transaction counts something of cmp_a's on the day of the fetch's engagement.
        await rollup.add(other, first, LATER, cost_paise=1)

        async def fetch() -> list[BaseException | None]:
            return await handler.on_engagement_recorded_batch(
                [
                    (_engaged("CSELL-NOV-T06-0002", channels_pb2.ENGAGEMENT_KIND_REPLIED), _delivery()),
                    (_engaged("CSELL-NOV-T06-0001", channels_pb2.ENGAGEMENT_KIND_OPENED), _delivery()),
                ]
            )

        task = asyncio.create_task(fetch())
        await eventually(lambda: _waiting_for_a_lock(db))
        # Waiting for cmp_a's row, the fetch must not hold cmp_b's (its reply's), which the other transaction adds to.
        await rollup.add(other, second, LATER, cost_paise=1)
    assert await task == [None, None]
