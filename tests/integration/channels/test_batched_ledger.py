"""The ledger is written per batch: the requests of one fetch share their intent and outcome transactions."""

import asyncio
from datetime import UTC, datetime

from opentelemetry.sdk.trace import TracerProvider

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

    def batch_sizes(name: str) -> list[int]:
        return [int(str((s.attributes or {})["xsell.batch.size"])) for s in spans if s.name == name]

    intents, outcomes = batch_sizes("channels.ledger.intents"), batch_sizes("channels.ledger.outcomes")
    assert sum(intents) == MESSAGES and sum(outcomes) == MESSAGES
    # Fewer transactions than messages: intents (and outcomes) of messages in flight together were written together.
    assert len(intents) < MESSAGES and max(intents) > 1
    assert len(outcomes) < MESSAGES


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
