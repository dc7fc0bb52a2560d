"""The ledger is written per batch: intents and outcomes of the messages in flight share their transactions."""

import asyncio
from datetime import UTC, datetime

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devstack.provider_sinks import ProviderSinks
from plumbing.bus import Bus
from plumbing.db import Database
from plumbing.outbox import Outbox
from services.channels import store
from services.channels.app import MIGRATIONS
from services.channels.delivery import DeliveryState, DispatchAction
from services.channels.ledger import Intent, Ledger, Outcome
from tests.integration.channels.conftest import SmtpRelay, StartChannels
from tests.integration.channels.support import dispatch_on, get_message, handled, new_campaign_id, publish, states

MESSAGES = 40


async def test_a_backlog_is_claimed_and_settled_in_batches_and_each_message_is_sent_once(
    start_channels: StartChannels, smtp_relay: SmtpRelay, provider_sinks: ProviderSinks, nats_bus: Bus
) -> None:
    campaign_ids = [new_campaign_id() for _ in range(MESSAGES)]
    last = 0
    # Published before the service starts, so its first fetch finds all of them waiting.
    for campaign_id in campaign_ids:
        last = await publish(nats_bus, dispatch_on("sms", campaign_id))
    channels = await start_channels(
        smtp_relay.port, **provider_sinks.channels_settings(), provider_concurrency={"sms": MESSAGES}
    )
    await handled(nats_bus, last)

    assert sorted(r.campaign_id for r in provider_sinks.sms.received) == sorted(campaign_ids)
    for campaign_id in campaign_ids[:3]:
        assert states(await get_message(channels, campaign_id)) == [
            "DELIVERY_STATE_QUEUED",
            "DELIVERY_STATE_SENDING",
            "DELIVERY_STATE_SENT",
        ]
    spans = channels.spans.get_finished_spans()

    writes = [s.attributes or {} for s in spans if s.name == "channels.ledger.write"]
    intents = [int(str(w["xsell.batch.intents"])) for w in writes]
    outcomes = [int(str(w["xsell.batch.outcomes"])) for w in writes]
    assert sum(intents) == MESSAGES and sum(outcomes) == MESSAGES
    # Fewer transactions than messages: intents and outcomes of messages in flight together were written together.
    assert len(writes) < MESSAGES and max(intents) > 1 and max(outcomes) > 1


async def test_an_outcome_batch_leaves_alone_a_message_a_receipt_settled_during_its_hand_over(
    database_url: str,
) -> None:
    db = Database(database_url)
    await db.migrate(MIGRATIONS)
    ledger = Ledger(db, Outbox(store.outbox), TracerProvider().get_tracer("test"))
    campaign_ids = [new_campaign_id() for _ in range(3)]
    try:
        now = datetime.now(UTC)
        claims = await asyncio.gather(
            *(ledger.claim(Intent(c, "CHANNEL_SMS", "prf_1", False, now)) for c in campaign_ids)
        )
        assert [claim.action for claim in claims] == [DispatchAction.SEND] * 3
        # The provider's receipt for the middle one arrives while the three are being handed over.
        async with db.transaction() as session:
            await store.set_state(session, campaign_ids[1], DeliveryState.DELIVERED, now=now, reason="receipt")

        applied = await asyncio.gather(
            *(
                ledger.settle(Outcome(c, DeliveryState.SENT, datetime.now(UTC), "", "", f"sid-{c}"))
                for c in campaign_ids
            )
        )

        assert applied == [True, False, True]
        async with db.snapshot() as session:
            records = [await store.load_message(session, c) for c in campaign_ids]
        assert [r.state if r else None for r in records] == [
            DeliveryState.SENT,
            DeliveryState.DELIVERED,
            DeliveryState.SENT,
        ]
        assert [r.attempts if r else None for r in records] == [1, 0, 1]
        assert [[s.step for s in r.timeline] if r else None for r in records] == [
            ["delivery:QUEUED", "delivery:SENDING", "delivery:SENT"],
            ["delivery:QUEUED", "delivery:SENDING"],
            ["delivery:QUEUED", "delivery:SENDING", "delivery:SENT"],
        ]
    finally:
        await db.dispose()


async def test_intents_and_outcomes_that_arrive_together_share_one_transaction(database_url: str) -> None:
    db = Database(database_url)
    await db.migrate(MIGRATIONS)
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    ledger = Ledger(db, Outbox(store.outbox), provider.get_tracer("test"))
    sent, arriving = new_campaign_id(), new_campaign_id()
    try:
        now = datetime.now(UTC)
        assert (await ledger.claim(Intent(sent, "CHANNEL_SMS", "prf_1", False, now))).action is DispatchAction.SEND
        # One message's hand-over ended as another one arrives.
        applied, claim = await asyncio.gather(
            ledger.settle(Outcome(sent, DeliveryState.SENT, datetime.now(UTC), "", "", "sid-1")),
            ledger.claim(Intent(arriving, "CHANNEL_SMS", "prf_2", False, now)),
        )

        assert applied is True and claim.action is DispatchAction.SEND
        [write] = [s.attributes for s in spans.get_finished_spans() if s.name == "channels.ledger.write"][1:]
        assert write == {"xsell.batch.intents": 1, "xsell.batch.outcomes": 1}
        async with db.snapshot() as session:
            records = [await store.load_message(session, c) for c in (sent, arriving)]
        assert [[s.step for s in r.timeline] if r else None for r in records] == [
            ["delivery:QUEUED", "delivery:SENDING", "delivery:SENT"],
            ["delivery:QUEUED", "delivery:SENDING"],
        ]
    finally:
        await db.dispose()
