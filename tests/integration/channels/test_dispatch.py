"""Dispatch against real NATS, SQLite / PostgreSQL and an aiosmtpd relay: exactly one e-mail per campaign ID."""

import re
from typing import Any

import pytest
from opentelemetry.trace import SpanKind

from plumbing.bus import Bus
from plumbing.signing import verify
from plumbing.telemetry import outreach_ids, outreach_trace_id
from services import streams
from services.channels.consumers import PROVIDER_MESSAGE_ID
from tests.integration.channels.conftest import (
    TRACKING_BASE,
    TRACKING_SECRET,
    Listener,
    Mailbox,
    SmtpRelay,
    StartChannels,
)
from tests.integration.channels.support import (
    dispatch,
    get_message,
    handled,
    left_sending,
    message_if_any,
    new_campaign_id,
    publish,
    published_state,
    states,
    updates,
)
from tests.waiting import eventually
from xsell.channels.v1 import resources_pb2
from xsell.channels.v1.events_pb2 import EngagementRecorded
from xsell.type.v1 import channel_pb2


async def test_dispatch_sends_one_tracked_email_and_a_redelivery_sends_nothing(
    start_channels: StartChannels, smtp_relay: SmtpRelay, nats_bus: Bus, listener: Listener
) -> None:
    channels = await start_channels(smtp_relay.port)
    campaign_id = new_campaign_id()
    event = dispatch(campaign_id)
    await publish(nats_bus, event)

    sent = await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_SENT)
    assert sent.channel == channel_pb2.CHANNEL_EMAIL
    mails = smtp_relay.mailbox.for_campaign(campaign_id)
    assert len(mails) == 1
    mail = mails[0]
    assert mail["Message-ID"] == f"<{campaign_id}@mail.test.in>"
    assert mail["To"] == "priya@example.in"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert verify(mail["List-Unsubscribe"].strip("<>").removeprefix(f"{TRACKING_BASE}/u/"), TRACKING_SECRET) == {
        "c": campaign_id,
        "k": "u",
    }
    html_part, text_part = mail.get_body(("html",)), mail.get_body(("plain",))
    assert html_part is not None and text_part is not None
    html = html_part.get_content()
    hrefs = re.findall(r'href="([^"]+)"', html)
    assert len(hrefs) == 3 and all(h.startswith(f"{TRACKING_BASE}/") for h in hrefs)
    tokens = [verify(h.split("/")[-1], TRACKING_SECRET) for h in hrefs]
    assert tokens == [
        {"c": campaign_id, "k": "c", "u": "https://bank.example.in/apply?o=T06"},
        {"c": campaign_id, "k": "c", "u": "https://bank.example.in/rates"},
        {"c": campaign_id, "k": "u"},
    ]
    pixel = re.search(rf'<img src="{re.escape(TRACKING_BASE)}/o/([^"]+)\.gif" width="1" height="1" alt="">', html)
    assert pixel is not None and verify(pixel.group(1), TRACKING_SECRET) == {"c": campaign_id, "k": "o"}
    assert "bank.example.in" not in text_part.get_content()

    message = await get_message(channels, campaign_id)
    assert message.state == resources_pb2.DELIVERY_STATE_SENT
    assert message.provider_message_id == f"<{campaign_id}@mail.test.in>"
    assert states(message) == ["DELIVERY_STATE_QUEUED", "DELIVERY_STATE_SENDING", "DELIVERY_STATE_SENT"]

    # The same outreach requested again under a new message id: the campaign ID keeps it to one e-mail.
    seq = await publish(nats_bus, dispatch(campaign_id))
    await handled(nats_bus, seq)
    assert len(smtp_relay.mailbox.for_campaign(campaign_id)) == 1
    assert states(await get_message(channels, campaign_id))[-1] == "DELIVERY_STATE_SENT"
    assert len(states(await get_message(channels, campaign_id))) == 3

    # The dispatch spans continue the outreach's trace; the one that sent names the relay, never the person.
    spans = channels.spans.get_finished_spans()
    dispatch_spans = [s for s in spans if s.name == "channels.dispatch" and s.attributes["campaign.id"] == campaign_id]
    assert len(dispatch_spans) == 2
    assert {format(s.context.trace_id, "032x") for s in dispatch_spans} == {outreach_trace_id(campaign_id)}
    [smtp_span] = [s for s in dispatch_spans if s.attributes.get("xsell.provider") == "email"]
    assert smtp_span.attributes["server.port"] == smtp_relay.port
    assert smtp_span.attributes[PROVIDER_MESSAGE_ID] == f"<{campaign_id}@mail.test.in>"
    assert not any("priya" in str(value) for s in spans for value in (s.attributes or {}).values())


async def test_an_email_sent_on_the_consumers_span_keeps_that_span_a_nats_consumers(
    start_channels: StartChannels, smtp_relay: SmtpRelay, nats_bus: Bus
) -> None:
    """The SMTP hand-over wrote messaging.system "smtp", operation "send" and the e-mail's Message-ID over the NATS
    consumer's span it is described on: in the outreach's trace, the span that took DispatchRequested read as an SMTP
    send, and the event's message id was gone from it."""
    channels = await start_channels(smtp_relay.port)
    campaign_id = new_campaign_id()
    trace_id, root_span_id = outreach_ids(campaign_id)
    event_id = new_campaign_id()
    # As campaigns' relay publishes it: in the outreach's trace, so the dispatch is described on the consumer's span.
    ack = await nats_bus.js.publish(
        streams.DISPATCH_REQUESTED,
        dispatch(campaign_id).SerializeToString(),
        headers={
            "Nats-Msg-Id": event_id,
            "Xsell-Campaign-Id": campaign_id,
            "traceparent": f"00-{trace_id:032x}-{root_span_id:016x}-01",
        },
    )
    await handled(nats_bus, int(ack.seq))

    spans = [s for s in channels.spans.get_finished_spans() if (s.attributes or {}).get("campaign.id") == campaign_id]
    [consumer] = [s for s in spans if s.kind is SpanKind.CONSUMER]
    assert consumer.attributes is not None
    assert consumer.attributes["messaging.system"] == "nats"
    assert consumer.attributes["messaging.operation.type"] == "process"
    assert consumer.attributes["messaging.message.id"] == event_id
    assert consumer.attributes["xsell.provider"] == "email"
    assert consumer.attributes["server.port"] == smtp_relay.port
    assert consumer.attributes[PROVIDER_MESSAGE_ID] == f"<{campaign_id}@mail.test.in>"


async def test_message_left_in_sending_becomes_ambiguous_and_is_not_sent(
    start_channels: StartChannels, smtp_relay: SmtpRelay, nats_bus: Bus, listener: Listener
) -> None:
    channels = await start_channels(smtp_relay.port)
    campaign_id = new_campaign_id()
    # A previous process wrote its intent, handed the message over (or not) and died before recording it.
    await left_sending(channels, campaign_id, "CHANNEL_EMAIL")
    seq = await publish(nats_bus, dispatch(campaign_id))

    ambiguous = await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_AMBIGUOUS)
    assert "never resent blind" in ambiguous.reason
    await handled(nats_bus, seq)
    assert smtp_relay.mailbox.for_campaign(campaign_id) == []
    message = await get_message(channels, campaign_id)
    assert message.state == resources_pb2.DELIVERY_STATE_AMBIGUOUS
    assert states(message) == ["DELIVERY_STATE_AMBIGUOUS"]


async def test_smtp_down_is_retried_and_sends_once_when_it_comes_back(
    start_channels: StartChannels, unstarted_smtp_relay: SmtpRelay, nats_bus: Bus, listener: Listener
) -> None:
    relay = unstarted_smtp_relay
    channels = await start_channels(relay.port)
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch(campaign_id))

    async def deferred() -> resources_pb2.Message | None:
        message = await message_if_any(channels, campaign_id)
        if message is None:
            return None
        return message if states(message)[-1:] == ["DELIVERY_STATE_QUEUED"] and len(message.timeline) > 1 else None

    message = await eventually(deferred)
    assert message.state == resources_pb2.DELIVERY_STATE_QUEUED
    assert "connection" in message.timeline[-1].detail
    assert relay.mailbox.messages == []

    await relay.start()
    try:
        await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_SENT)
        assert len(relay.mailbox.for_campaign(campaign_id)) == 1
        message = await get_message(channels, campaign_id)
        assert message.state == resources_pb2.DELIVERY_STATE_SENT
        assert states(message)[-2:] == ["DELIVERY_STATE_SENDING", "DELIVERY_STATE_SENT"]
        assert [u.state for u in updates(listener, campaign_id)] == [resources_pb2.DELIVERY_STATE_SENT]
    finally:
        await relay.stop()


async def test_recipient_refused_with_5xx_fails_without_retry_and_without_the_address(
    start_channels: StartChannels, either_smtp_relay: SmtpRelay, nats_bus: Bus, listener: Listener
) -> None:
    smtp_relay = either_smtp_relay
    channels = await start_channels(smtp_relay.port, smtp_connections=1)
    campaign_id = new_campaign_id()
    seq = await publish(nats_bus, dispatch(campaign_id, to_address="nobody@bank.example.in"))

    failed = await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_FAILED)
    assert failed.reason.startswith("SMTP 550 on RCPT")
    assert "nobody" not in failed.reason
    await handled(nats_bus, seq)
    message = await get_message(channels, campaign_id)
    assert message.state == resources_pb2.DELIVERY_STATE_FAILED
    assert states(message) == ["DELIVERY_STATE_QUEUED", "DELIVERY_STATE_SENDING", "DELIVERY_STATE_FAILED"]
    assert smtp_relay.mailbox.for_campaign(campaign_id) == []
    # 5.1.1 says the address does not exist: a bounce, as a report of it would be, which segments suppresses.
    assert (message.timeline[-1].engagement_kind, message.timeline[-1].detail) == (
        resources_pb2.ENGAGEMENT_KIND_BOUNCED,
        "5.1.1 permanent",
    )
    (bounced,) = await listener.eventually_on(streams.ENGAGEMENT_RECORDED, campaign_id)
    event = EngagementRecorded.FromString(bounced.data)
    assert (event.kind, event.detail, event.channel) == (
        resources_pb2.ENGAGEMENT_KIND_BOUNCED,
        "5.1.1 permanent",
        channel_pb2.CHANNEL_EMAIL,
    )
    assert event.profile_id and event.HasField("occur_time")
    # The refused transaction's session was closed; the next e-mail goes over a new one.
    after = new_campaign_id()
    await publish(nats_bus, dispatch(after))
    await published_state(listener, after, resources_pb2.DELIVERY_STATE_SENT)
    assert len(smtp_relay.mailbox.for_campaign(after)) == 1


class _QuotingMailbox(Mailbox):
    """A relay that quotes the recipient in its replies, as many do, here a mailbox named by a mobile number."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        if address.endswith("@refused.example.in"):
            return f"550 5.1.1 <{address}>: user +91 98765 43210 unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await super().handle_DATA(server, session, envelope)
        return f"250 2.0.0 Ok: queued for {envelope.rcpt_tos[0]} (mobile 9876543210)"


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-command-at-a-time"])
async def test_what_the_relay_says_is_kept_without_the_recipients_number(
    start_channels: StartChannels, nats_bus: Bus, listener: Listener, pipelining: bool
) -> None:
    """A refusal is the FAILED reason and the reply to the data the SENT step's detail: both are kept and published, so
    both lose the number as well as the address, and keep the codes."""
    relay = SmtpRelay(_QuotingMailbox(pipelining=pipelining), port=0)
    await relay.start()
    try:
        channels = await start_channels(relay.port)
        refused, accepted = new_campaign_id(), new_campaign_id()
        await publish(nats_bus, dispatch(refused, to_address="9876543210@refused.example.in"))
        await publish(nats_bus, dispatch(accepted, to_address="9876543210@sms.example.in"))

        failed = await published_state(listener, refused, resources_pb2.DELIVERY_STATE_FAILED)
        assert failed.reason == "SMTP 550 on RCPT: 5.1.1 <[address]>: user [number] unknown"
        message = await get_message(channels, refused)
        assert [e.detail for e in message.timeline if e.delivery_state == resources_pb2.DELIVERY_STATE_FAILED] == [
            failed.reason
        ]
        await published_state(listener, accepted, resources_pb2.DELIVERY_STATE_SENT)
        message = await get_message(channels, accepted)
        assert message.timeline[-1].detail == "2.0.0 Ok: queued for [address] (mobile [number])"
    finally:
        await relay.stop()


async def test_dispatch_without_email_fails_and_is_dead_lettered(
    start_channels: StartChannels, smtp_relay: SmtpRelay, nats_bus: Bus, listener: Listener
) -> None:
    channels = await start_channels(smtp_relay.port)
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch(campaign_id, email=None))

    failed = await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_FAILED)
    assert "no email message" in failed.reason
    dead_letter_subject = f"{streams.DEAD_LETTER_PREFIX}.{streams.CHANNELS_DISPATCH.durable}"
    dead = await listener.eventually_on(dead_letter_subject, campaign_id)
    assert "no email message" in dead[0].headers["Xsell-Dlq-Reason"]
    message = await get_message(channels, campaign_id)
    assert message.state == resources_pb2.DELIVERY_STATE_FAILED
    assert smtp_relay.mailbox.for_campaign(campaign_id) == []


@pytest.mark.parametrize(
    ("to_address", "subject", "says"),
    [
        ("priya\x00@example.in", "Pre-approved", "email.to_address is not one plain ASCII address"),
        ("priya@example.in,evil@attacker.example", "Pre-approved", "email.to_address is not one plain ASCII address"),
        ("priya@example.in", "Pre-\x00approved", "email.subject contains a control character"),
    ],
    ids=["control-character-in-address", "two-addresses", "control-character-in-subject"],
)
async def test_an_email_that_cannot_be_written_fails_at_once_and_is_never_ambiguous(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    nats_bus: Bus,
    listener: Listener,
    to_address: str,
    subject: str,
    says: str,
) -> None:
    """Refused before the intent with why, not raised inside the hand-over, where its redelivery read as a message the
    relay might hold (AMBIGUOUS, for an operator to settle by hand) though nothing was written to it."""
    channels = await start_channels(smtp_relay.port)
    campaign_id = new_campaign_id()
    event = dispatch(campaign_id, to_address=to_address)
    event.email.subject = subject
    await publish(nats_bus, event)

    failed = await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_FAILED)
    assert says in failed.reason
    message = await get_message(channels, campaign_id)
    assert states(message) == ["DELIVERY_STATE_QUEUED", "DELIVERY_STATE_FAILED"]
    assert smtp_relay.mailbox.for_campaign(campaign_id) == []
