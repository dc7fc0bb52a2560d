"""A concurrent duplicate of a delivery receipt or an engagement (the same request_id at another replica: a provider's
webhook retried while its first call is in flight) that loses the race on the idempotency key gets the first call's
answer, as every other mutating RPC's does (Idempotency.run_once), on PostgreSQL, where the loser waits for the
winner's commit and then fails on the key."""

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from plumbing.bus import Bus
from plumbing.ids import new_id
from tests.integration.channels.conftest import Channels, Listener, SmtpRelay, StartChannels
from tests.integration.channels.support import dispatch, get_message, new_campaign_id, publish, published_state
from tests.waiting import eventually
from xsell.channels.v1 import resources_pb2, service_pb2

R = TypeVar("R")


def _waiting_on_locks(engine: AsyncEngine, count: int) -> Callable[[], Awaitable[bool]]:
    async def waiting() -> bool:
        async with engine.connect() as watcher:
            waits = await watcher.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            )
        return (waits or 0) >= count

    return waiting


async def _first_and_duplicate(
    database_url: str,
    method: str,
    request_id: str,
    first: Callable[[], Awaitable[R]],
    duplicate: Callable[[], Awaitable[R]],
) -> tuple[R, R]:
    """Both calls' answers, the duplicate made while the first waits, all its other writes done, to write its answer:
    another transaction holds the request_id's key until both calls wait on a lock, then gives it up."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as holder:
            await holder.execute(
                text(
                    "INSERT INTO idempotency (method, request_id, scope, request_hash, response, created_at) "
                    "VALUES (:method, :request_id, '', '', '', now())"
                ),
                {"method": method, "request_id": request_id},
            )
            first_answer = asyncio.ensure_future(first())
            await eventually(_waiting_on_locks(engine, 1))
            # The duplicate reads no answer to the request_id: the first call's is not written yet.
            duplicate_answer = asyncio.ensure_future(duplicate())
            await eventually(_waiting_on_locks(engine, 2))
            # The key given up: one call writes its answer and commits; the other, which read none, fails on the key.
            await holder.rollback()
        return await first_answer, await duplicate_answer
    finally:
        await engine.dispose()


async def _two_replicas_and_a_sent_email(
    start_channels: StartChannels, relay: SmtpRelay, bus: Bus, listener: Listener
) -> tuple[Channels, Channels, str]:
    """Two channels replicas on one database (a duplicate at the first would wait for its batch to commit)."""
    one = await start_channels(relay.port)
    other = await start_channels(relay.port)
    campaign_id = new_campaign_id()
    await publish(bus, dispatch(campaign_id))
    await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_SENT)
    return one, other, campaign_id


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_receipts_duplicate_that_loses_the_race_on_the_request_id_gets_the_first_answer(
    start_channels: StartChannels, smtp_relay: SmtpRelay, nats_bus: Bus, listener: Listener, database_url: str
) -> None:
    one, other, campaign_id = await _two_replicas_and_a_sent_email(start_channels, smtp_relay, nats_bus, listener)
    request = service_pb2.RecordDeliveryReceiptRequest(
        request_id=new_id("rcpt_"), campaign_id=campaign_id, state=resources_pb2.DELIVERY_STATE_DELIVERED
    )

    # The first call locks the message; the duplicate waits for it, then reads the message it delivered.
    first, duplicate = await _first_and_duplicate(
        database_url,
        "RecordDeliveryReceipt",
        request.request_id,
        lambda: one.stub.RecordDeliveryReceipt(request, timeout=60),
        lambda: other.stub.RecordDeliveryReceipt(request, timeout=60),
    )

    assert first.message.state == resources_pb2.DELIVERY_STATE_DELIVERED
    assert duplicate == first
    timeline = (await get_message(one, campaign_id)).timeline
    assert [step.delivery_state for step in timeline].count(resources_pb2.DELIVERY_STATE_DELIVERED) == 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_an_engagements_duplicate_that_loses_the_race_on_the_request_id_gets_the_first_answer(
    start_channels: StartChannels, smtp_relay: SmtpRelay, nats_bus: Bus, listener: Listener, database_url: str
) -> None:
    one, other, campaign_id = await _two_replicas_and_a_sent_email(start_channels, smtp_relay, nats_bus, listener)
    opened_at = Timestamp()
    opened_at.FromDatetime(datetime.now(UTC))
    request = service_pb2.RecordEngagementRequest(
        request_id=new_id("eng_"),
        campaign_id=campaign_id,
        kind=resources_pb2.ENGAGEMENT_KIND_OPENED,
        occur_time=opened_at,
    )

    # Engagement locks no message: both calls wait on the key, and either may write it first; the other's answer is
    # the one written.
    first, duplicate = await _first_and_duplicate(
        database_url,
        "RecordEngagement",
        request.request_id,
        lambda: one.stub.RecordEngagement(request, timeout=60),
        lambda: other.stub.RecordEngagement(request, timeout=60),
    )

    assert first.message.timeline[-1].engagement_kind == resources_pb2.ENGAGEMENT_KIND_OPENED
    assert duplicate == first
    timeline = (await get_message(one, campaign_id)).timeline
    assert [step.engagement_kind for step in timeline].count(resources_pb2.ENGAGEMENT_KIND_OPENED) == 1
