"""SMTP sessions kept open: many e-mails over one connection, and a session the relay dropped replaced, not retried."""

from collections import Counter

from plumbing.bus import Bus
from tests.integration.channels.conftest import Listener, SmtpRelay, StartChannels
from tests.integration.channels.support import dispatch, get_message, new_campaign_id, publish, published_state, states
from xsell.channels.v1 import resources_pb2


async def test_many_emails_go_over_one_kept_open_session(
    start_channels: StartChannels, either_smtp_relay: SmtpRelay, nats_bus: Bus, listener: Listener
) -> None:
    smtp_relay = either_smtp_relay
    await start_channels(smtp_relay.port, smtp_connections=1)
    await _five_emails_sent(smtp_relay, nats_bus, listener)
    assert len(set(smtp_relay.mailbox.sessions)) == 1


async def test_a_session_ends_after_its_allowed_number_of_messages_and_a_new_one_carries_on(
    start_channels: StartChannels, either_smtp_relay: SmtpRelay, nats_bus: Bus, listener: Listener
) -> None:
    smtp_relay = either_smtp_relay
    await start_channels(smtp_relay.port, smtp_connections=1, smtp_messages_per_session=2)
    await _five_emails_sent(smtp_relay, nats_bus, listener)
    # Two, two and one: three sessions, one after the other.
    assert sorted(Counter(smtp_relay.mailbox.sessions).values()) == [1, 2, 2]


async def test_a_session_the_relay_closed_is_replaced_and_the_message_goes_at_once(
    start_channels: StartChannels, either_smtp_relay: SmtpRelay, nats_bus: Bus, listener: Listener
) -> None:
    smtp_relay = either_smtp_relay
    channels = await start_channels(smtp_relay.port, smtp_connections=1)
    first = new_campaign_id()
    await publish(nats_bus, dispatch(first))
    await published_state(listener, first, resources_pb2.DELIVERY_STATE_SENT)
    # The relay restarts: the session channels keeps open is closed under it.
    await smtp_relay.stop()
    await smtp_relay.start()

    second = new_campaign_id()
    await publish(nats_bus, dispatch(second))
    await published_state(listener, second, resources_pb2.DELIVERY_STATE_SENT)

    assert [m["X-Xsell-Campaign-Id"] for m in smtp_relay.mailbox.messages] == [first, second]
    assert len(set(smtp_relay.mailbox.sessions)) == 2
    # No retry: the relay held nothing of the message when the old session failed before MAIL.
    assert states(await get_message(channels, second)) == [
        "DELIVERY_STATE_QUEUED",
        "DELIVERY_STATE_SENDING",
        "DELIVERY_STATE_SENT",
    ]


async def _five_emails_sent(smtp_relay: SmtpRelay, nats_bus: Bus, listener: Listener) -> None:
    """Five dispatches published, each SENT, and each in the relay's mailbox once."""
    campaign_ids = [new_campaign_id() for _ in range(5)]
    for campaign_id in campaign_ids:
        await publish(nats_bus, dispatch(campaign_id))
    for campaign_id in campaign_ids:
        await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_SENT)
    assert sorted(m["X-Xsell-Campaign-Id"] for m in smtp_relay.mailbox.messages) == sorted(campaign_ids)
