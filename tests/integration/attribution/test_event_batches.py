"""Channels' and campaigns' events arrive a fetch at a time and are applied in one transaction per fetch, on SQLite
and PostgreSQL: each message still gets its own outcome (applied, a redelivery skipped, naked until its outreach
is known, or refused), and the views end up exactly what a recompute from the ledger says."""

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from sqlalchemy import func, select

from plumbing.bus import Delivery, PermanentError
from plumbing.db import Database
from plumbing.errors import InvalidArgument
from plumbing.ids import new_id
from plumbing.outbox import Inbox
from plumbing.telemetry import outreach_trace_id
from services.attribution import store
from services.attribution.app import MIGRATIONS
from services.attribution.consumers import Handlers, OutreachNotYetKnown
from services.attribution.ledger import Ledger
from services.attribution.reconcile import reconcile
from services.attribution.revenue import CostModel
from tests.integration.attribution.seeding import SENT_AT, ts
from xsell.campaigns.v1 import events_pb2 as campaign_events
from xsell.campaigns.v1 import resources_pb2 as campaigns_pb2
from xsell.channels.v1 import events_pb2 as channel_events
from xsell.channels.v1 import resources_pb2 as channels_pb2
from xsell.type.v1 import channel_pb2

SMS_PAISE = 25


@pytest.fixture
async def handlers(database_url: str) -> AsyncIterator[tuple[Handlers, Database, InMemorySpanExporter]]:
    db = Database(database_url)
    await db.migrate(MIGRATIONS)
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    ledger = Ledger(CostModel({"sms": SMS_PAISE}, 15, 650), "INR")
    yield Handlers(db, Inbox(store.inbox), ledger, provider.get_tracer("test")), db, spans
    await db.dispose()


def _delivery(message_id: str = "") -> Delivery:
    return Delivery(message_id or new_id("msg_"), "subject", 1)


def _created(campaign_id: str, at: datetime = SENT_AT) -> campaign_events.OutreachCreated:
    return campaign_events.OutreachCreated(
        event_id=new_id("evt_"),
        outreach=campaigns_pb2.Outreach(
            campaign_id=campaign_id,
            campaign_key="cmp_msme_gst",
            profile_id=f"prf_{campaign_id[-4:]}",
            channel=channel_pb2.CHANNEL_SMS,
            trigger_code="T06",
            offer=campaigns_pb2.Offer(product_code="MSME_WC_TOPUP"),
            labels=["Cross-Sell – MSME"],
            create_time=ts(at),
        ),
    )


def _receipt(campaign_id: str, state: int, at: datetime) -> channel_events.DeliveryUpdated:
    return channel_events.DeliveryUpdated(
        event_id=new_id("evt_"),
        campaign_id=campaign_id,
        state=state,
        occur_time=ts(at),  # type: ignore[arg-type]
    )


async def _count(db: Database, query: Any) -> Any:
    async with db.snapshot() as session:
        return (await session.execute(query)).one()


async def test_a_fetch_of_events_is_applied_together_and_each_message_gets_its_own_outcome(
    handlers: tuple[Handlers, Database, InMemorySpanExporter],
) -> None:
    handler, db, spans = handlers
    ids = [f"CSELL-NOV-T06-{n:04d}" for n in range(1, 5)]
    first = _delivery()
    created = [(_created(campaign_id), _delivery()) for campaign_id in ids[:3]]
    broken = campaign_events.OutreachCreated(outreach=campaigns_pb2.Outreach(campaign_id="", channel=1))
    far = _created(ids[3])
    far.outreach.create_time.seconds = 253_402_300_800  # year 10000
    outcomes = await handler.on_outreach_created_batch(
        [(_created(ids[0]), first), *created, (broken, _delivery()), (far, _delivery())]
    )
    # The first copy of ids[0] records it; the second (a republished event under another message id) adds nothing.
    assert outcomes[:4] == [None] * 4
    assert isinstance(outcomes[4], PermanentError) and isinstance(outcomes[5], InvalidArgument)
    # A person whose id is as long as segments admits (128 characters) is recorded like any other.
    long_profile = _created("CSELL-NOV-T06-0128")
    long_profile.outreach.profile_id = "p" * 128
    assert await handler.on_outreach_created_batch([(long_profile, _delivery())]) == [None]
    # A redelivery of a message already applied is skipped.
    assert await handler.on_outreach_created_batch([(_created(ids[0]), first)]) == [None]
    assert tuple(await _count(db, select(func.count()).select_from(store.outreaches))) == (4,)
    assert tuple(await _count(db, select(func.sum(store.rollup.c.sent)))) == (4,)

    day = timedelta(days=1)
    receipts = [
        # ids[0]: DELIVERED first, then its earlier SENT, then the SENT again under another message id.
        (_receipt(ids[0], channels_pb2.DELIVERY_STATE_DELIVERED, SENT_AT + 2 * day), _delivery()),
        (_receipt(ids[0], channels_pb2.DELIVERY_STATE_SENT, SENT_AT + day), _delivery()),
        (_receipt(ids[0], channels_pb2.DELIVERY_STATE_SENT, SENT_AT + day), _delivery()),
        # ids[1]: failed at the provider: no step, no cost.
        (_receipt(ids[1], channels_pb2.DELIVERY_STATE_FAILED, SENT_AT + day), _delivery()),
        # ids[2]: sent; ids[3] is not in the ledger (its OutreachCreated was refused, or is still on its way).
        (_receipt(ids[2], channels_pb2.DELIVERY_STATE_SENT, SENT_AT + day), _delivery()),
        (_receipt(ids[3], channels_pb2.DELIVERY_STATE_SENT, SENT_AT + day), unknown := _delivery()),
        (_receipt("", channels_pb2.DELIVERY_STATE_SENT, SENT_AT), _delivery()),
    ]
    outcomes = await handler.on_delivery_updated_batch(receipts)
    assert outcomes[:5] == [None] * 5
    assert isinstance(outcomes[5], OutreachNotYetKnown) and isinstance(outcomes[6], PermanentError)
    costs = store.costs.c
    assert tuple(await _count(db, select(func.count(), func.sum(costs.amount_paise)))) == (2, 2 * SMS_PAISE)
    async with db.snapshot() as session:
        booked = dict((await session.execute(select(costs.campaign_id, costs.at))).all())
    assert booked == {ids[0]: SENT_AT + day, ids[2]: SENT_AT + day}  # ids[0]'s moved to its SENT's day

    # The unknown outreach's receipt was not claimed: once its outreach is recorded, its redelivery applies.
    assert await handler.on_outreach_created_batch([(_created(ids[3]), _delivery())]) == [None]
    assert await handler.on_delivery_updated_batch([(receipts[5][0], unknown)]) == [None]
    assert tuple(await _count(db, select(func.count()).select_from(store.costs))) == (3,)

    result = await reconcile(db, 330)
    assert not result.drift, [difference.describe() for difference in result.differences]
    # Each message has its span in its own outreach's trace; the one whose outreach was unknown is an ERROR.
    receipt_spans = [span for span in spans.get_finished_spans() if span.name == "attribution.record_delivery"]
    unknown_trace = int(outreach_trace_id(ids[3]), 16)
    assert {span.context.trace_id for span in receipt_spans} == {  # type: ignore[union-attr]
        int(outreach_trace_id(campaign_id), 16) for campaign_id in ids
    }
    assert [span.status.status_code for span in receipt_spans if span.context.trace_id == unknown_trace] == [  # type: ignore[union-attr]
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]


def _engaged(campaign_id: str, kind: int, at: datetime) -> channel_events.EngagementRecorded:
    return channel_events.EngagementRecorded(
        event_id=new_id("evt_"),
        campaign_id=campaign_id,
        kind=kind,
        occur_time=ts(at),  # type: ignore[arg-type]
    )


async def test_a_fetch_of_one_outreachs_engagement_makes_one_lead_and_counts_each_level_once(
    handlers: tuple[Handlers, Database, InMemorySpanExporter],
) -> None:
    handler, db, _ = handlers
    campaign_id = "CSELL-NOV-T06-0001"
    assert await handler.on_outreach_created_batch([(_created(campaign_id), _delivery())]) == [None]
    hour = timedelta(hours=1)
    # The open, the "YES", a click the provider timed before the open, and the "YES" again (another webhook).
    fetch = [
        (_engaged(campaign_id, channels_pb2.ENGAGEMENT_KIND_OPENED, SENT_AT + 2 * hour), _delivery()),
        (_engaged(campaign_id, channels_pb2.ENGAGEMENT_KIND_REPLIED, SENT_AT + 3 * hour), _delivery()),
        (_engaged(campaign_id, channels_pb2.ENGAGEMENT_KIND_CLICKED, SENT_AT + hour), _delivery()),
        (_engaged(campaign_id, channels_pb2.ENGAGEMENT_KIND_REPLIED, SENT_AT + 4 * hour), _delivery()),
    ]
    assert await handler.on_engagement_recorded_batch(fetch) == [None] * 4
    assert tuple(await _count(db, select(func.count()).select_from(store.leads))) == (1,)
    rollup = store.rollup.c
    totals = await _count(
        db,
        select(
            func.sum(rollup.f_opened), func.sum(rollup.f_clicked), func.sum(rollup.f_responded), func.sum(rollup.sent)
        ),
    )
    assert tuple(totals) == (1, 1, 1, 1)  # each level once, the outreach sent once
    # The RM's time once (15 min x 650 paise); no send cost, since no provider reported taking the message.
    assert tuple(await _count(db, select(func.sum(store.costs.c.amount_paise)))) == (15 * 650,)
    result = await reconcile(db, 330)
    assert not result.drift, [difference.describe() for difference in result.differences]


async def test_a_receipt_an_older_release_applied_without_a_cost_is_found_and_booked_by_reconcile(
    handlers: tuple[Handlers, Database, InMemorySpanExporter],
) -> None:
    """In a rollout, a new pod records the outreach (no cost at creation), an old one applies its SENT (no cost at
    the send either); a later receipt finds the step reached and books nothing. Reconcile finds and books it."""
    handler, db, _ = handlers
    campaign_id, sent_at = "CSELL-NOV-T06-0042", SENT_AT + timedelta(minutes=2)
    assert await handler.on_outreach_created_batch([(_created(campaign_id), _delivery())]) == [None]
    async with db.transaction() as session:  # what the old release's receipt handler did: the step, no cost
        locked = await store.lock_outreach(session, campaign_id)
        assert locked is not None
        await Ledger(CostModel({}, 15, 650), "INR").reach_step(session, locked, "sent", sent_at)
    receipt = _receipt(campaign_id, channels_pb2.DELIVERY_STATE_DELIVERED, sent_at + timedelta(minutes=1))
    assert await handler.on_delivery_updated_batch([(receipt, _delivery())]) == [None]
    assert tuple(await _count(db, select(func.count()).select_from(store.costs))) == (0,)

    model = CostModel({"sms": SMS_PAISE}, 15, 650)
    assert not (await reconcile(db, 330)).drift  # the rollup matches the ledger: the cost is missing from both
    found = await reconcile(db, 330, cost_model=model)
    assert found.drift and found.unbooked_sends == 1 and not found.fixed
    fixed = await reconcile(db, 330, fix=True, cost_model=model)
    assert fixed.fixed
    async with db.snapshot() as session:
        booked = (await session.execute(select(store.costs.c.amount_paise, store.costs.c.at))).all()
    assert [tuple(row) for row in booked] == [(SMS_PAISE, sent_at)]  # at the first proof, the SENT
    assert not (await reconcile(db, 330, cost_model=model)).drift
    rollup = store.rollup.c
    assert tuple(await _count(db, select(func.sum(rollup.cost_paise)))) == (SMS_PAISE,)
