"""Two fetches of OutreachCreated recorded at once on PostgreSQL (two replicas of attribution) add a campaign's new
rollup groups in one order: a fetch that met the SMS group before the e-mail one takes the e-mail one first, so it
never holds a group the other fetch waits for while it waits for one that fetch holds."""

import asyncio
from datetime import UTC, datetime

from sqlalchemy import text

from plumbing.db import Database
from services.attribution import store
from services.attribution.app import MIGRATIONS
from tests.waiting import eventually

AT = datetime(2026, 11, 14, 10, 0, tzinfo=UTC)


def _outreach(campaign_id: str, channel: str) -> store.Outreach:
    return store.Outreach(
        campaign_id=campaign_id,
        campaign_key="cmp_two_channels",
        profile_id=f"prf_{campaign_id[-4:]}",
        channel=channel,
        trigger_code="T06",
        product_code="MSME_WC_TOPUP",
        labels=[],
        category="loan",
        created_at=AT,
    )


async def _waiting_for_a_lock(db: Database) -> bool:
    async with db.transaction() as session:
        query = text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return bool((await session.execute(query)).scalar_one())


async def test_fetches_of_outreaches_add_new_groups_in_one_order(postgres_url: str) -> None:
    db = Database(postgres_url)
    await db.migrate(MIGRATIONS)
    try:
        async with db.transaction() as other:
            # The other replica's fetch has added the campaign's e-mail group, not committed yet.
            assert await store.add_outreaches(other, [_outreach("CSELL-NOV-T06-0001", "email")])

            async def fetch() -> list[store.Outreach]:
                async with db.transaction() as session:
                    return await store.add_outreaches(
                        session, [_outreach("CSELL-NOV-T06-0002", "sms"), _outreach("CSELL-NOV-T06-0003", "email")]
                    )

            task = asyncio.create_task(fetch())
            await eventually(lambda: _waiting_for_a_lock(db))
            # Waiting for the e-mail group, this fetch must not hold the SMS one, which the other one adds next.
            assert await store.add_outreaches(other, [_outreach("CSELL-NOV-T06-0004", "sms")])
        assert len(await task) == 2
    finally:
        await db.dispose()
