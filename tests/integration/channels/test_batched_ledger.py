"""The ledger is written per batch: the requests of one fetch share their intent and outcome transactions."""

from devstack.provider_sinks import ProviderSinks
from plumbing.bus import Bus
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
