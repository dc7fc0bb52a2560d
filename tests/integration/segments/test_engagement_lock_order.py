"""A fetch of engagement writes its people's suppressions in profile id order on PostgreSQL: a fetch with one
person's "NO" before another's held the first one's suppression while it waited for the second's, and an
AddSuppressions over both (one statement, in profile id order) deadlocked with it."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from plumbing.bus import Delivery
from plumbing.db import Database
from plumbing.ids import new_id
from services.segments import store, suppressions
from services.segments.consumers import ProfileActivityConsumers
from tests.integration.segments.activity_consumers import activity_consumers
from tests.waiting import eventually
from xsell.channels.v1 import events_pb2 as channel_events
from xsell.channels.v1 import resources_pb2 as channel_resources
from xsell.segments.v1 import resources_pb2
from xsell.type.v1 import channel_pb2

NOW = datetime.now(UTC)


@pytest.fixture
async def handlers(postgres_url: str) -> AsyncIterator[tuple[Database, ProfileActivityConsumers]]:
    async with activity_consumers(postgres_url) as made:
        yield made


def _declined(profile_id: str) -> tuple[channel_events.EngagementRecorded, Delivery]:
    event = channel_events.EngagementRecorded(
        event_id=new_id("evt_"),
        campaign_id=f"CSELL-NOV-T06-{profile_id[-4:]}",
        profile_id=profile_id,
        channel=channel_pb2.CHANNEL_SMS,
        kind=channel_resources.ENGAGEMENT_KIND_DECLINED,
    )
    event.occur_time.FromDatetime(NOW)
    return event, Delivery(new_id("msg_"), "subject", 1)


def _opt_out(profile_id: str) -> dict[str, object]:
    return {
        "profile_id": profile_id,
        "channel": suppressions.channel_key(channel_pb2.CHANNEL_UNSPECIFIED),
        "reason": suppressions.reason_key(resources_pb2.SUPPRESSION_REASON_RECENT_DECLINE),
        "expire_time": None,
        "note": "the bank's list",
    }


async def _waiting_for_a_lock(db: Database) -> bool:
    async with db.transaction() as session:
        query = text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return bool((await session.execute(query)).scalar_one())


async def test_a_fetch_writes_its_suppressions_in_profile_id_order(
    handlers: tuple[Database, ProfileActivityConsumers],
) -> None:
    db, consumers = handlers
    async with db.transaction() as session:
        await store.ensure_profiles(session, ["prf_0001", "prf_0002"], NOW)
    async with db.transaction() as other:
        # An AddSuppressions over both people has written prf_0001's row, not committed yet.
        await store.upsert_suppressions(other, [_opt_out("prf_0001")], NOW)
        task = asyncio.create_task(consumers.on_engagement_batch([_declined("prf_0002"), _declined("prf_0001")]))
        await eventually(lambda: _waiting_for_a_lock(db))
        # Waiting for prf_0001's row, the fetch must not hold prf_0002's, which the other transaction writes next.
        await store.upsert_suppressions(other, [_opt_out("prf_0002")], NOW)
    assert await task == [None, None]
