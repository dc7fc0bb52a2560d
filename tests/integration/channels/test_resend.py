"""Ambiguous hand-overs to a provider that reports every message: settled by its report, or, when none came in its
window, handed over again exactly once (services/channels/resend.py)."""

import asyncio
from datetime import timedelta

from devstack.provider_sinks import Fault, ProviderSinks
from plumbing.bus import Bus
from plumbing.ids import new_id
from plumbing.outbox import utcnow
from plumbing.telemetry import outreach_ids
from services import streams
from services.channels import store
from services.channels.resend import Resender, request_gone_reason, resend_reason
from tests.integration.channels.conftest import Channels, Listener, SmtpRelay, StartChannels
from tests.integration.channels.support import (
    dispatch_on,
    get_message,
    new_campaign_id,
    publish,
    published_state,
    updates,
)
from tests.waiting import eventually
from xsell.channels.v1 import resources_pb2, service_pb2

AMBIGUOUS = resources_pb2.DELIVERY_STATE_AMBIGUOUS
SENT = resources_pb2.DELIVERY_STATE_SENT
WINDOW = 0.5
LONG_WINDOW = 3600.0
"""A window the service's own loop never reaches in a test: the test runs a step itself, with its clock past it."""


async def _start(start_channels: StartChannels, smtp_relay: SmtpRelay, sinks: ProviderSinks) -> Channels:
    return await start_channels(
        smtp_relay.port,
        resend_without_receipt_seconds={"sms": WINDOW, "whatsapp": WINDOW},
        resend_poll_seconds=0.1,
        **sinks.channels_settings(),
    )


def _resender(channels: Channels) -> Resender:
    """The service's own resender, its clock two hours on: every AMBIGUOUS message is past LONG_WINDOW."""
    task = next(task for task in channels.process.tasks if task.name == "resender")
    resender = task.run.__self__  # type: ignore[attr-defined]
    assert isinstance(resender, Resender)
    resender.clock = lambda: utcnow() + timedelta(hours=2)
    return resender


def _steps(message: resources_pb2.Message) -> list[tuple[str, str]]:
    return [
        (resources_pb2.DeliveryState.Name(entry.delivery_state), entry.detail)
        for entry in message.timeline
        if entry.WhichOneof("step") == "delivery_state"
    ]


async def _state(channels: Channels, campaign_id: str, state: int) -> resources_pb2.Message:
    async def reached() -> resources_pb2.Message | None:
        message = await get_message(channels, campaign_id)
        return message if message.state == state else None

    message = await eventually(reached)
    assert message is not None
    return message


async def _sent(nats_bus: Bus, listener: Listener, channel: str = "sms") -> str:
    """Another message of the provider, SENT: its receipt, recorded later, shows that reports are coming."""
    other = new_campaign_id()
    await publish(nats_bus, dispatch_on(channel, other))
    await published_state(listener, other, SENT)
    return other


async def _reported(channels: Channels, campaign_id: str) -> None:
    """The provider's report of `campaign_id`: after it, a message AMBIGUOUS since before is judged by its silence."""
    await channels.stub.RecordDeliveryReceipt(
        service_pb2.RecordDeliveryReceiptRequest(
            request_id=new_id("rcpt_"), campaign_id=campaign_id, state=resources_pb2.DELIVERY_STATE_DELIVERED
        )
    )


async def test_an_sms_the_provider_never_took_is_handed_over_again_once_after_its_window(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    channels = await _start(start_channels, smtp_relay, provider_sinks)
    other = await _sent(nats_bus, listener)
    provider_sinks.sms.fail_next(Fault.DROP_UNTAKEN)
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", campaign_id))
    await published_state(listener, campaign_id, AMBIGUOUS)
    await _reported(channels, other)

    message = await _state(channels, campaign_id, SENT)
    assert len(provider_sinks.sms.for_campaign(campaign_id)) == 1
    steps = _steps(message)
    assert [name for name, _ in steps] == [
        "DELIVERY_STATE_QUEUED",
        "DELIVERY_STATE_SENDING",
        "DELIVERY_STATE_AMBIGUOUS",
        "DELIVERY_STATE_QUEUED",
        "DELIVERY_STATE_SENDING",
        "DELIVERY_STATE_SENT",
    ]
    assert steps[3][1] == resend_reason("sms", WINDOW)
    # The hand-over again continues the outreach's trace, through channels' own stream.
    resent = listener.on(streams.DISPATCH_RESENT, campaign_id)
    assert len(resent) == 1 and resent[0].headers["Nats-Msg-Id"] == f"resend-{campaign_id}"
    outreach_trace = f"{outreach_ids(campaign_id)[0]:032x}"
    assert resent[0].headers["traceparent"].split("-")[1] == outreach_trace
    [span] = [s for s in channels.spans.get_finished_spans() if s.name == "channels.resend"]
    assert span.context is not None and f"{span.context.trace_id:032x}" == outreach_trace
    await asyncio.sleep(WINDOW * 3)
    assert len(provider_sinks.sms.for_campaign(campaign_id)) == 1


async def test_a_report_within_the_window_settles_it_and_nothing_is_sent_again(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    channels = await start_channels(
        smtp_relay.port,
        resend_without_receipt_seconds={"whatsapp": LONG_WINDOW},
        **provider_sinks.channels_settings(),
    )
    provider_sinks.whatsapp.fail_next(Fault.ACCEPT_THEN_DROP)
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("whatsapp", campaign_id))
    await published_state(listener, campaign_id, AMBIGUOUS)
    [received] = provider_sinks.whatsapp.for_campaign(campaign_id)

    # Meta's `sent` status, as the gateway records it: the provider has the message.
    await channels.stub.RecordDeliveryReceipt(
        service_pb2.RecordDeliveryReceiptRequest(
            request_id=new_id("rcpt_"), campaign_id=campaign_id, state=SENT, provider_message_id="wamid.1"
        )
    )
    await published_state(listener, campaign_id, SENT)
    assert await _resender(channels).step() == 0  # past the window: nothing is AMBIGUOUS any more
    message = await get_message(channels, campaign_id)
    assert message.state == SENT and message.provider_message_id == "wamid.1"
    assert provider_sinks.whatsapp.for_campaign(campaign_id) == [received]
    assert listener.on(streams.DISPATCH_RESENT, campaign_id) == []


async def test_a_hand_over_again_that_ends_ambiguous_too_is_never_tried_a_third_time(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    channels = await _start(start_channels, smtp_relay, provider_sinks)
    other = await _sent(nats_bus, listener)
    provider_sinks.sms.fail_next(Fault.DROP_UNTAKEN, Fault.DROP_UNTAKEN)
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", campaign_id))
    await published_state(listener, campaign_id, AMBIGUOUS)
    await _reported(channels, other)

    async def ambiguous_twice() -> bool:
        return [u.state for u in updates(listener, campaign_id)].count(AMBIGUOUS) == 2

    await eventually(ambiguous_twice)
    assert await _resender(channels).step() == 0  # resent once already
    message = await get_message(channels, campaign_id)
    assert message.state == AMBIGUOUS
    assert [name for name, _ in _steps(message)].count("DELIVERY_STATE_SENDING") == 2
    assert provider_sinks.sms.for_campaign(campaign_id) == []
    assert len(listener.on(streams.DISPATCH_RESENT, campaign_id)) == 1


async def test_a_request_gone_from_its_stream_is_left_for_an_operator(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    channels = await start_channels(
        smtp_relay.port,
        resend_without_receipt_seconds={"sms": LONG_WINDOW},
        **provider_sinks.channels_settings(),
    )
    other = await _sent(nats_bus, listener)
    provider_sinks.sms.fail_next(Fault.DROP_UNTAKEN)
    campaign_id = new_campaign_id()
    seq = await publish(nats_bus, dispatch_on("sms", campaign_id))
    await published_state(listener, campaign_id, AMBIGUOUS)
    await _reported(channels, other)
    await nats_bus.js.delete_msg(streams.CAMPAIGNS_STREAM.name, seq)
    assert await _resender(channels).step() == 0

    async def forgotten() -> bool:
        async with channels.db.transaction() as session:
            row = (
                await session.execute(store.messages.select().where(store.messages.c.campaign_id == campaign_id))
            ).one()
        return row.request_stream == streams.CAMPAIGNS_STREAM.name and row.request_seq is None

    await eventually(forgotten)
    message = await get_message(channels, campaign_id)
    assert message.state == AMBIGUOUS
    assert message.timeline[-1].detail == request_gone_reason("sms", LONG_WINDOW)
    assert provider_sinks.sms.for_campaign(campaign_id) == []
    listed = await channels.stub.ListAmbiguousMessages(service_pb2.ListAmbiguousMessagesRequest())
    assert campaign_id in [m.campaign_id for m in listed.messages]


async def test_silence_counts_only_while_the_providers_reports_are_coming(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    """No report since it was handed over (a wrong webhook secret, the gateway down): never handed over again, however
    long past its window; once a report comes, its silence means the provider never had it."""
    channels = await start_channels(
        smtp_relay.port, resend_without_receipt_seconds={"sms": LONG_WINDOW}, **provider_sinks.channels_settings()
    )
    other = await _sent(nats_bus, listener)
    provider_sinks.sms.fail_next(Fault.DROP_UNTAKEN)
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", campaign_id))
    await published_state(listener, campaign_id, AMBIGUOUS)
    resender = _resender(channels)
    assert await resender.step() == 0  # two hours past its window, but no report of any SMS yet

    await _reported(channels, other)
    assert await resender.step() == 1
    await _state(channels, campaign_id, SENT)
    assert len(provider_sinks.sms.for_campaign(campaign_id)) == 1
