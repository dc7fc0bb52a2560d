"""Dispatch on SMS, WhatsApp, push and webhook through real NATS, SQLite / PostgreSQL and the local provider servers."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import grpc
import pytest
from opentelemetry.sdk.trace import Event
from opentelemetry.trace import SpanKind
from sqlalchemy import select

from devstack.nats_server import free_port
from devstack.provider_sinks import Fault, ProviderSinks
from plumbing.bus import Bus, Delivery, PermanentError
from plumbing.telemetry import CAMPAIGN_ID, HELD, HOLD_REASON, HOLD_UNTIL, outreach_ids
from services import streams
from services.channels import store
from tests.integration.channels.conftest import Listener, SmtpRelay, StartChannels
from tests.integration.channels.support import (
    dispatch_on,
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
from xsell.channels.v1 import resources_pb2, service_pb2
from xsell.channels.v1.events_pb2 import EngagementRecorded
from xsell.segments.v1 import resources_pb2 as segments_resources
from xsell.segments.v1 import service_pb2 as segments_service
from xsell.segments.v1 import service_pb2_grpc as segments_grpc
from xsell.type.v1 import channel_pb2

SENT = resources_pb2.DELIVERY_STATE_SENT
FAILED = resources_pb2.DELIVERY_STATE_FAILED
AMBIGUOUS = resources_pb2.DELIVERY_STATE_AMBIGUOUS


async def test_each_http_channel_sends_once_and_a_redelivery_sends_nothing(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    sinks = {"sms": provider_sinks.sms, "whatsapp": provider_sinks.whatsapp, "push": provider_sinks.push}
    sinks["webhook"] = provider_sinks.webhook
    campaign_ids = {name: new_campaign_id() for name in sinks}
    for name, campaign_id in campaign_ids.items():
        await publish(nats_bus, dispatch_on(name, campaign_id, webhook_url=provider_sinks.webhook_url()))

    for name, campaign_id in campaign_ids.items():
        sent = await published_state(listener, campaign_id, SENT)
        assert sent.channel == getattr(channel_pb2, f"CHANNEL_{name.upper()}")
        assert len(sinks[name].for_campaign(campaign_id)) == 1
        message = await get_message(channels, campaign_id)
        assert message.state == SENT
        assert states(message) == ["DELIVERY_STATE_QUEUED", "DELIVERY_STATE_SENDING", "DELIVERY_STATE_SENT"]
        assert message.provider_message_id != ""
    assert provider_sinks.sms.for_campaign(campaign_ids["sms"])[0].body["CustomField"] == campaign_ids["sms"]

    # The same outreaches requested again: the ledger keeps each to one provider call.
    last = 0
    for name, campaign_id in campaign_ids.items():
        last = await publish(nats_bus, dispatch_on(name, campaign_id, webhook_url=provider_sinks.webhook_url()))
    await handled(nats_bus, last)
    for name, campaign_id in campaign_ids.items():
        assert len(sinks[name].for_campaign(campaign_id)) == 1
        assert len(states(await get_message(channels, campaign_id))) == 3
    assert provider_sinks.webhook.duplicates == 0

    spans = channels.spans.get_finished_spans()
    # The provider call is described on the dispatch span that made it; redeliveries made none.
    sms_spans = [
        s
        for s in spans
        if s.name == "channels.dispatch"
        and s.attributes["campaign.id"] == campaign_ids["sms"]
        and "xsell.provider" in s.attributes
    ]
    assert len(sms_spans) == 1 and sms_spans[0].attributes["http.response.status_code"] == 200
    assert sms_spans[0].attributes["xsell.provider"] == "sms"
    assert sms_spans[0].attributes["server.port"] == provider_sinks.sms.port
    assert not any("9876543210" in str(value) for s in spans for value in (s.attributes or {}).values())


async def test_throttling_and_an_outage_are_retried_with_backoff_and_send_once(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    provider_sinks.sms.fail_next(Fault.THROTTLE, Fault.UNAVAILABLE)
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", campaign_id))

    await published_state(listener, campaign_id, SENT)
    assert len(provider_sinks.sms.for_campaign(campaign_id)) == 1
    assert [status for status, _ in provider_sinks.sms.refused] == [429, 503]
    message = await get_message(channels, campaign_id)
    assert states(message) == [
        "DELIVERY_STATE_QUEUED",
        "DELIVERY_STATE_SENDING",
        "DELIVERY_STATE_QUEUED",
        "DELIVERY_STATE_SENDING",
        "DELIVERY_STATE_QUEUED",
        "DELIVERY_STATE_SENDING",
        "DELIVERY_STATE_SENT",
    ]
    details = [entry.detail for entry in message.timeline]
    assert details[2].startswith("sms HTTP 429") and details[4].startswith("sms HTTP 503")
    assert [u.state for u in updates(listener, campaign_id)] == [SENT]


@pytest.mark.parametrize(
    ("channel", "fields", "says", "bounce"),
    [
        ("whatsapp", {"template_name": "unapproved_offer"}, "error 132001", ""),
        # Not on WhatsApp, said at once: a bounce too, which segments suppresses WhatsApp on for a while.
        ("whatsapp", {"to_number": "+915876543210"}, "error 131026", "UNREACHABLE whatsapp 131026"),
        # A number Exotel says cannot take an SMS: the bounce its FAILED_INVALID_NUMBER callback would have made.
        ("sms", {"to_number": "+915876543210"}, "Invalid Recipient", "INVALID_NUMBER exotel 400 Invalid Recipient"),
    ],
    ids=["unapproved-template", "not-on-whatsapp", "sms-invalid-recipient"],
)
async def test_a_permanent_refusal_fails_at_once_with_the_providers_reason(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
    channel: str,
    fields: dict[str, str],
    says: str,
    bounce: str,
) -> None:
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    campaign_id = new_campaign_id()
    seq = await publish(nats_bus, dispatch_on(channel, campaign_id, **fields))

    failed = await published_state(listener, campaign_id, FAILED)
    assert says in failed.reason
    assert "5876543210" not in failed.reason
    await handled(nats_bus, seq)
    assert len(getattr(provider_sinks, channel).refused) == 1
    message = await get_message(channels, campaign_id)
    steps = ["DELIVERY_STATE_QUEUED", "DELIVERY_STATE_SENDING", "DELIVERY_STATE_FAILED"]
    if not bounce:
        assert states(message) == steps
        assert says in message.timeline[-1].detail
        return
    assert states(message) == steps  # the bounce is an engagement step after them
    assert (message.timeline[-1].engagement_kind, message.timeline[-1].detail) == (
        resources_pb2.ENGAGEMENT_KIND_BOUNCED,
        bounce,
    )
    (bounced,) = await listener.eventually_on(streams.ENGAGEMENT_RECORDED, campaign_id)
    event = EngagementRecorded.FromString(bounced.data)
    assert (event.kind, event.detail, event.channel) == (
        resources_pb2.ENGAGEMENT_KIND_BOUNCED,
        bounce,
        {"whatsapp": channel_pb2.CHANNEL_WHATSAPP, "sms": channel_pb2.CHANNEL_SMS}[channel],
    )
    assert event.queue_time == message.timeline[0].occur_time  # when it was queued, its address chosen


async def test_an_outage_that_outlasts_every_attempt_fails_and_is_dead_lettered_with_the_reason(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    provider_sinks.push.fail_next(*[Fault.UNAVAILABLE] * streams.CHANNELS_DISPATCH.max_deliver)
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("push", campaign_id))

    failed = await published_state(listener, campaign_id, FAILED)
    assert failed.reason.startswith(f"gave up after {streams.CHANNELS_DISPATCH.max_deliver} attempts: push HTTP 503")
    dead_letter_subject = f"{streams.DEAD_LETTER_PREFIX}.{streams.CHANNELS_DISPATCH.durable}"

    async def dead_lettered() -> object:
        return listener.on(dead_letter_subject, campaign_id)

    [dead] = await eventually(dead_lettered)
    assert "gave up after" in dead.headers["Xsell-Dlq-Reason"]
    assert provider_sinks.push.received == []
    assert (await get_message(channels, campaign_id)).state == FAILED


# The answer is lost on the connection, or an edge in front of the provider answers 504 for it: it may have the message.
LOST_ANSWERS = pytest.mark.parametrize(
    "fault", [Fault.ACCEPT_THEN_DROP, Fault.ACCEPT_THEN_GATEWAY_TIMEOUT], ids=["connection-lost", "edge-504"]
)


@LOST_ANSWERS
async def test_an_sms_whose_answer_was_lost_is_ambiguous_and_never_resent(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
    fault: Fault,
) -> None:
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    provider_sinks.sms.fail_next(fault)
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", campaign_id))

    ambiguous = await published_state(listener, campaign_id, AMBIGUOUS)
    assert "may have the message" in ambiguous.reason
    seq = await publish(nats_bus, dispatch_on("sms", campaign_id))
    await handled(nats_bus, seq)
    assert len(provider_sinks.sms.for_campaign(campaign_id)) == 1
    message = await get_message(channels, campaign_id)
    assert message.state == AMBIGUOUS
    assert states(message)[-1] == "DELIVERY_STATE_AMBIGUOUS"


@LOST_ANSWERS
async def test_a_webhook_whose_answer_was_lost_is_asked_again_under_the_same_key(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
    fault: Fault,
) -> None:
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    provider_sinks.webhook.fail_next(fault)
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("webhook", campaign_id, webhook_url=provider_sinks.webhook_url()))

    await published_state(listener, campaign_id, SENT)
    assert len(provider_sinks.webhook.for_campaign(campaign_id)) == 1
    assert provider_sinks.webhook.duplicates == 1
    assert [u.state for u in updates(listener, campaign_id)] == [SENT]
    assert (await get_message(channels, campaign_id)).state == SENT


@pytest.mark.parametrize(
    ("channel", "expected"), [("webhook", "DELIVERY_STATE_SENT"), ("sms", "DELIVERY_STATE_AMBIGUOUS")]
)
async def test_a_crash_after_the_intent_resends_only_where_the_provider_deduplicates(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
    channel: str,
    expected: str,
) -> None:
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    campaign_id = new_campaign_id()
    # A previous process wrote its intent, handed the message over (or not) and died before recording it.
    await left_sending(channels, campaign_id, f"CHANNEL_{channel.upper()}")
    seq = await publish(nats_bus, dispatch_on(channel, campaign_id, webhook_url=provider_sinks.webhook_url()))
    await handled(nats_bus, seq)

    message = await get_message(channels, campaign_id)
    assert resources_pb2.DeliveryState.Name(message.state) == expected
    sink = provider_sinks.webhook if channel == "webhook" else provider_sinks.sms
    assert len(sink.for_campaign(campaign_id)) == (1 if channel == "webhook" else 0)


async def test_quiet_hours_on_the_last_allowed_delivery_fail_the_message_with_the_reason(
    start_channels: StartChannels, smtp_relay: SmtpRelay, provider_sinks: ProviderSinks, listener: Listener
) -> None:
    """No later delivery would come to send it: FAILED saying why, never left QUEUED saying when it would go."""
    local = datetime.now(ZoneInfo("Asia/Kolkata"))
    window = f"{local - timedelta(hours=1):%H:%M}-{local + timedelta(hours=1):%H:%M}"
    channels = await start_channels(
        smtp_relay.port, quiet_hours={"CHANNEL_SMS": window}, **provider_sinks.channels_settings()
    )
    handler = next(task for task in channels.process.tasks if task.name == "dispatch-consumer").run.__self__.handler  # type: ignore[attr-defined]
    campaign_id = new_campaign_id()
    last = Delivery("msg-last", streams.DISPATCH_REQUESTED, num_delivered=streams.CHANNELS_DISPATCH.max_deliver)
    with pytest.raises(PermanentError, match="quiet hours"):
        await handler(dispatch_on("sms", campaign_id), last)

    failed = await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_FAILED)
    assert failed.reason.startswith(f"gave up after {streams.CHANNELS_DISPATCH.max_deliver} attempts: quiet hours")
    assert provider_sinks.sms.received == []


async def test_quiet_hours_hold_the_message_back(
    start_channels: StartChannels, smtp_relay: SmtpRelay, provider_sinks: ProviderSinks, nats_bus: Bus
) -> None:
    local = datetime.now(ZoneInfo("Asia/Kolkata"))
    window = f"{local - timedelta(hours=1):%H:%M}-{local + timedelta(hours=1):%H:%M}"
    channels = await start_channels(
        smtp_relay.port, quiet_hours={"CHANNEL_SMS": window}, **provider_sinks.channels_settings()
    )
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", campaign_id))

    async def held() -> resources_pb2.Message | None:
        message = await message_if_any(channels, campaign_id)
        if message is None:
            return None
        return message if "quiet hours" in message.timeline[-1].detail else None

    message = await eventually(held)
    assert message.state == resources_pb2.DELIVERY_STATE_QUEUED
    assert window in message.timeline[-1].detail
    assert provider_sinks.sms.received == []
    # The outreach's trace says why it waits and until when: an outreach.held event on the span that held it.
    trace_id = outreach_ids(campaign_id)[0]

    async def hold_events() -> list[Event]:
        return [
            event
            for span in channels.spans.get_finished_spans()
            if span.context is not None and span.context.trace_id == trace_id
            for event in span.events
            if event.name == HELD
        ]

    (event,) = await eventually(hold_events)
    attributes = dict(event.attributes or {})
    assert attributes[CAMPAIGN_ID] == campaign_id and window in attributes[HOLD_REASON]
    until = datetime.fromisoformat(attributes[HOLD_UNTIL])
    # Tried again when the quiet hours end (to the minute in Kolkata, where the window is).
    assert until.astimezone(ZoneInfo("Asia/Kolkata")).strftime("%H:%M") == window.split("-")[1]


class _Suppressions(segments_grpc.SegmentsServiceServicer):
    """Segments' CheckSuppression: one person opted out of SMS, one never opted in to WhatsApp, and one whose phone
    is now +919800000777."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []
        self.addresses: list[str] = []
        self.opted_out = {"prof_opted_out"}

    async def CheckSuppression(
        self, request: segments_service.CheckSuppressionRequest, context: grpc.aio.ServicerContext
    ) -> segments_service.CheckSuppressionResponse:
        self.asked.append((request.profile_id, request.channel))
        self.addresses.append(request.address)
        if request.profile_id == "prof_refused":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "address must be at most 4096 characters")
        if request.profile_id == "prof_moved" and request.address != "+919800000777":
            return segments_service.CheckSuppressionResponse(
                address_replaced="the person's phone has been replaced since the message was made"
            )
        if request.profile_id == "prof_no_opt_in" and request.channel == channel_pb2.CHANNEL_WHATSAPP:
            return segments_service.CheckSuppressionResponse(consent_missing="whatsapp_opt_in is not true")
        if request.profile_id not in self.opted_out:
            return segments_service.CheckSuppressionResponse(suppressed=False)
        suppression = segments_resources.Suppression(
            profile_id=request.profile_id,
            channel=channel_pb2.CHANNEL_SMS,
            reason=segments_resources.SUPPRESSION_REASON_OPT_OUT,
        )
        return segments_service.CheckSuppressionResponse(suppressed=True, suppressions=[suppression])


async def _start_segments(port: int = 0) -> tuple[grpc.aio.Server, str, _Suppressions]:
    servicer = _Suppressions()
    server = grpc.aio.server()
    segments_grpc.add_SegmentsServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, f"127.0.0.1:{bound}", servicer


@pytest.fixture
async def segments_server() -> AsyncIterator[tuple[str, _Suppressions]]:
    server, target, servicer = await _start_segments()
    yield target, servicer
    await server.stop(0)


async def test_a_suppression_added_after_release_stops_the_send(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
    segments_server: tuple[str, _Suppressions],
) -> None:
    target, suppressions = segments_server
    channels = await start_channels(smtp_relay.port, segments_target=target, **provider_sinks.channels_settings())
    opted_out, allowed = new_campaign_id(), new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", opted_out, profile_id="prof_opted_out"))
    await publish(nats_bus, dispatch_on("sms", allowed))

    failed = await published_state(listener, opted_out, FAILED)
    assert failed.reason == "suppressed at send time: SUPPRESSION_REASON_OPT_OUT"
    await published_state(listener, allowed, SENT)
    assert provider_sinks.sms.for_campaign(opted_out) == []
    assert len(provider_sinks.sms.for_campaign(allowed)) == 1
    assert ("prof_opted_out", channel_pb2.CHANNEL_SMS) in suppressions.asked
    assert states(await get_message(channels, opted_out)) == ["DELIVERY_STATE_QUEUED", "DELIVERY_STATE_FAILED"]


async def test_a_message_made_for_an_address_the_person_has_since_replaced_is_not_sent(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
    segments_server: tuple[str, _Suppressions],
) -> None:
    target, suppressions = segments_server
    await start_channels(smtp_relay.port, segments_target=target, **provider_sinks.channels_settings())
    old_number, new_number = new_campaign_id(), new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", old_number, profile_id="prof_moved", to_number="+919800000666"))
    await publish(nats_bus, dispatch_on("whatsapp", new_number, profile_id="prof_moved", to_number="+919800000777"))

    failed = await published_state(listener, old_number, FAILED)
    assert failed.reason == (
        "address replaced at send time: the person's phone has been replaced since the message was made; "
        "not sent to the old one"
    )
    await published_state(listener, new_number, SENT)
    assert provider_sinks.sms.for_campaign(old_number) == []
    assert len(provider_sinks.whatsapp.for_campaign(new_number)) == 1
    # Segments is asked about the address each message was made for.
    assert {"+919800000666", "+919800000777"} <= set(suppressions.addresses)


async def test_a_request_without_a_profile_cannot_be_checked_and_is_never_sent(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
    segments_server: tuple[str, _Suppressions],
) -> None:
    target, suppressions = segments_server
    await start_channels(smtp_relay.port, segments_target=target, **provider_sinks.channels_settings())
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", campaign_id, profile_id=""))

    failed = await published_state(listener, campaign_id, FAILED)
    assert failed.reason.startswith("profile_id is empty: suppressions and consent cannot be checked")
    assert provider_sinks.sms.received == [] and suppressions.asked == []


async def test_a_whatsapp_message_to_someone_without_an_opt_in_at_send_time_is_not_sent(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
    segments_server: tuple[str, _Suppressions],
) -> None:
    target, _ = segments_server
    await start_channels(smtp_relay.port, segments_target=target, **provider_sinks.channels_settings())
    withdrawn, consented = new_campaign_id(), new_campaign_id()
    await publish(nats_bus, dispatch_on("whatsapp", withdrawn, profile_id="prof_no_opt_in"))
    await publish(nats_bus, dispatch_on("whatsapp", consented))
    failed = await published_state(listener, withdrawn, FAILED)
    assert failed.reason == "no consent at send time: whatsapp_opt_in is not true"
    await published_state(listener, consented, SENT)
    assert provider_sinks.whatsapp.for_campaign(withdrawn) == []


async def test_an_address_longer_than_segments_checks_fails_at_once_naming_the_field(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
    segments_server: tuple[str, _Suppressions],
) -> None:
    """Segments refuses to check an address over 4096 characters (INVALID_ARGUMENT), which channels read as segments
    being away: a push to a 5,000-character token was asked about eight times, then FAILED "suppressions could not be
    checked (... INVALID_ARGUMENT)". Refused before segments is asked; and should segments refuse a question anyway,
    that is its answer, not an outage."""
    target, suppressions = segments_server
    channels = await start_channels(smtp_relay.port, segments_target=target, **provider_sinks.channels_settings())
    too_long, refused = new_campaign_id(), new_campaign_id()
    await publish(nats_bus, dispatch_on("push", too_long, device_token="t" * 5000))
    await publish(nats_bus, dispatch_on("push", refused, profile_id="prof_refused"))

    failed = await published_state(listener, too_long, FAILED)
    assert failed.reason == (
        "push.device_token is 5000 characters; at most 4096, the longest address segments checks suppressions for"
    )
    assert states(await get_message(channels, too_long)) == ["DELIVERY_STATE_QUEUED", "DELIVERY_STATE_FAILED"]
    assert all(len(address) <= 4096 for address in suppressions.addresses)

    failed = await published_state(listener, refused, FAILED)
    assert failed.reason == (
        "suppressions could not be checked: segments refused the request (address must be at most 4096 characters); "
        "nothing is sent"
    )
    assert states(await get_message(channels, refused)) == ["DELIVERY_STATE_QUEUED", "DELIVERY_STATE_FAILED"]
    assert suppressions.asked.count(("prof_refused", channel_pb2.CHANNEL_PUSH)) == 1
    assert provider_sinks.push.received == []


async def test_while_segments_cannot_be_asked_nothing_is_sent_and_it_goes_once_segments_answers(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    port = free_port()
    channels = await start_channels(
        smtp_relay.port, segments_target=f"127.0.0.1:{port}", **provider_sinks.channels_settings()
    )
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", campaign_id))

    async def tried_twice() -> bool:
        spans = channels.spans.get_finished_spans()
        return (
            len([s for s in spans if s.name == "channels.dispatch" and s.attributes["campaign.id"] == campaign_id]) >= 2
        )

    await eventually(tried_twice)
    assert provider_sinks.sms.received == []
    # Why it waits is on its timeline: GetMessage never answers NOT_FOUND for a message held back.
    waiting = await get_message(channels, campaign_id)
    assert waiting.state == resources_pb2.DELIVERY_STATE_QUEUED
    assert "suppressions could not be checked" in waiting.timeline[-1].detail

    server, _, servicer = await _start_segments(port)
    try:
        await published_state(listener, campaign_id, SENT)
        assert len(provider_sinks.sms.for_campaign(campaign_id)) == 1
        assert servicer.asked == [("prof_1", channel_pb2.CHANNEL_SMS)]
    finally:
        await server.stop(0)


async def test_while_segments_stays_away_the_message_fails_with_the_reason_before_its_request_is_dead_lettered(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    channels = await start_channels(
        smtp_relay.port, segments_target=f"127.0.0.1:{free_port()}", **provider_sinks.channels_settings()
    )
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", campaign_id))
    failed = await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_FAILED)
    assert failed.reason.startswith(f"gave up after {streams.CHANNELS_DISPATCH.max_deliver} attempts: suppressions")
    message = await get_message(channels, campaign_id)
    assert message.state == resources_pb2.DELIVERY_STATE_FAILED and provider_sinks.sms.received == []


async def test_a_provider_never_has_more_calls_in_flight_than_its_concurrency(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    provider_sinks.sms.hold()
    campaign_ids = [new_campaign_id() for _ in range(6)]
    # Published before channels starts, so that its first fetch takes all six at once.
    for campaign_id in campaign_ids:
        await publish(nats_bus, dispatch_on("sms", campaign_id))
    channels = await start_channels(
        smtp_relay.port,
        dispatch_concurrency=8,
        provider_concurrency={"sms": 2},
        **provider_sinks.channels_settings(),
    )
    consumer = next(task for task in channels.process.tasks if task.name == "dispatch-consumer")
    throttle = consumer.run.__self__.handler.providers.throttles["sms"]  # type: ignore[attr-defined]

    async def two_at_the_provider_and_four_waiting() -> bool:
        return provider_sinks.sms.in_flight == 2 and throttle.waiting == 4

    # The provider holds two calls unanswered; the other four wait in the replica for a slot.
    await eventually(two_at_the_provider_and_four_waiting)
    provider_sinks.sms.release()
    for campaign_id in campaign_ids:
        await published_state(listener, campaign_id, SENT)
    assert provider_sinks.sms.most_in_flight == 2


async def test_a_request_in_its_outreachs_trace_is_dispatched_on_the_consumers_span_and_its_event_continues_it(
    start_channels: StartChannels, smtp_relay: SmtpRelay, provider_sinks: ProviderSinks, nats_bus: Bus
) -> None:
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    campaign_id = new_campaign_id()
    trace_id, root_span_id = outreach_ids(campaign_id)
    # As campaigns' relay publishes it: a traceparent whose parent is the outreach's root span.
    ack = await nats_bus.js.publish(
        streams.DISPATCH_REQUESTED,
        dispatch_on("sms", campaign_id).SerializeToString(),
        headers={
            "Nats-Msg-Id": new_campaign_id(),
            "Xsell-Campaign-Id": campaign_id,
            "traceparent": f"00-{trace_id:032x}-{root_span_id:016x}-01",
        },
    )
    await handled(nats_bus, int(ack.seq))

    spans = [s for s in channels.spans.get_finished_spans() if (s.attributes or {}).get("campaign.id") == campaign_id]
    # One span of this process per message: the consumer's, carrying the hand-over; no dispatch span beside it.
    [consumer] = [s for s in spans if s.kind is SpanKind.CONSUMER]
    assert not [s for s in spans if s.name == "channels.dispatch"]
    assert consumer.context.trace_id == trace_id and consumer.parent is not None
    assert consumer.parent.span_id == root_span_id
    assert consumer.attributes is not None and consumer.attributes["xsell.provider"] == "sms"
    assert consumer.attributes["http.response.status_code"] == 200
    # The DeliveryUpdated it caused continues the same trace, as a child of that span.
    async with channels.db.snapshot() as session:
        headers = (
            (
                await session.execute(
                    select(store.outbox.c.headers).where(store.outbox.c.subject == streams.DELIVERY_UPDATED)
                )
            )
            .scalars()
            .all()
        )
    [traceparent] = [h["traceparent"] for h in headers if h.get("Xsell-Campaign-Id") == campaign_id]
    assert traceparent == f"00-{trace_id:032x}-{consumer.context.span_id:016x}-01"


async def test_a_webhook_url_whose_port_cannot_be_read_fails_at_once_and_is_never_left_sending(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    """Its port was read inside the hand-over, after the intent: eight attempts, each raising, left the message SENDING
    for good, with no DeliveryUpdated and nothing for an operator to settle."""
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    campaign_id = new_campaign_id()
    bad_port = "http://127.0.0.1:99999/crm/tasks"  # the sinks' host, which the settings allow
    await publish(nats_bus, dispatch_on("webhook", campaign_id, webhook_url=bad_port))

    failed = await published_state(listener, campaign_id, FAILED)
    assert "webhook.url has no valid port" in failed.reason
    assert states(await get_message(channels, campaign_id)) == ["DELIVERY_STATE_QUEUED", "DELIVERY_STATE_FAILED"]
    assert provider_sinks.webhook.received == []


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        ('{"customer_name": "Priya \\ud800"}', "webhook.payload_json is not valid UTF-8 text"),
        ('{"a":' + "[" * 50_000 + "]" * 50_000 + "}", "webhook.payload_json nests deeper than 100 levels"),
    ],
    ids=["lone-surrogate", "nested-50000"],
)
async def test_a_webhook_payload_that_cannot_be_written_fails_at_once_naming_the_field(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
    payload: str,
    says: str,
) -> None:
    """A lone surrogate failed only inside the hand-over (UnicodeEncodeError), after the intent, and was recorded as
    "may have reached the provider" after eight attempts; a payload nested past json's recursion raised RecursionError,
    retried eight times and dead-lettered with no message recorded. Both are refused before the intent."""
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    campaign_id = new_campaign_id()
    event = dispatch_on("webhook", campaign_id, webhook_url=provider_sinks.webhook_url(), payload_json=payload)
    await publish(nats_bus, event)

    failed = await published_state(listener, campaign_id, FAILED)
    assert failed.reason.startswith(says)
    assert states(await get_message(channels, campaign_id)) == ["DELIVERY_STATE_QUEUED", "DELIVERY_STATE_FAILED"]
    dead = await listener.eventually_on(
        f"{streams.DEAD_LETTER_PREFIX}.{streams.CHANNELS_DISPATCH.durable}", campaign_id
    )
    assert says in dead[0].headers["Xsell-Dlq-Reason"]
    assert provider_sinks.webhook.received == []


async def test_a_campaign_id_that_would_write_a_header_is_dead_lettered_unsent(
    start_channels: StartChannels, smtp_relay: SmtpRelay, provider_sinks: ProviderSinks, nats_bus: Bus
) -> None:
    """Campaign IDs travel in headers (Idempotency-Key, Message-ID): one with a line break is refused before anything,
    as campaigns never issues one."""
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    injected = new_campaign_id() + "\r\nX-Injected: 1"
    seq = await publish(nats_bus, dispatch_on("webhook", injected, webhook_url=provider_sinks.webhook_url()))
    await handled(nats_bus, seq)
    assert provider_sinks.webhook.received == []
    assert await message_if_any(channels, injected) is None


async def test_a_profile_id_as_long_as_segments_allows_is_sent(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    """Segments admits profile ids of 128 characters; channels refused those over 100, so such a person was never
    messaged."""
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    campaign_id = new_campaign_id()
    profile_id = "p" * 128
    await publish(nats_bus, dispatch_on("sms", campaign_id, profile_id=profile_id))
    await published_state(listener, campaign_id, SENT)  # kept whole in the ledger (PostgreSQL checks the width)
    assert len(provider_sinks.sms.for_campaign(campaign_id)) == 1
    assert (await get_message(channels, campaign_id)).state == SENT


async def test_a_message_waiting_for_its_providers_slot_is_not_found_with_why_not_as_a_wrong_id(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    """Its intent, the first row, is written once its turn comes: until then GetMessage answered "has no message; check
    the ID on the link", which sent the caller to check an ID that was right."""
    provider_sinks.sms.hold()
    channels = await start_channels(
        smtp_relay.port, provider_concurrency={"sms": 1}, **provider_sinks.channels_settings()
    )
    consumer = next(task for task in channels.process.tasks if task.name == "dispatch-consumer")
    throttle = consumer.run.__self__.handler.providers.throttles["sms"]  # type: ignore[attr-defined]
    first, waiting = new_campaign_id(), new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", first))

    async def first_at_the_provider() -> bool:
        return provider_sinks.sms.in_flight == 1

    await eventually(first_at_the_provider)
    await publish(nats_bus, dispatch_on("sms", waiting))

    async def second_waits_for_the_slot() -> bool:
        return throttle.waiting == 1

    try:
        await eventually(second_waits_for_the_slot)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await get_message(channels, waiting)
    finally:
        provider_sinks.sms.release()
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    assert (
        f"channels has no record of campaign ID {waiting} yet: its request may still be waiting in the stream or for "
        "the provider's rate, or the ID may be wrong"
    ) in (raised.value.details() or "")
    await published_state(listener, waiting, SENT)
    assert (await get_message(channels, waiting)).state == SENT


async def test_a_stop_while_the_message_waits_for_its_providers_slot_holds_it_back(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
    segments_server: tuple[str, _Suppressions],
) -> None:
    target, suppressions = segments_server
    provider_sinks.sms.hold()
    channels = await start_channels(
        smtp_relay.port,
        segments_target=target,
        provider_concurrency={"sms": 1},
        recheck_after_seconds=0.2,
        **provider_sinks.channels_settings(),
    )
    consumer = next(task for task in channels.process.tasks if task.name == "dispatch-consumer")
    throttle = consumer.run.__self__.handler.providers.throttles["sms"]  # type: ignore[attr-defined]
    first, waiting = new_campaign_id(), new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", first, profile_id="prof_first"))

    async def first_at_the_provider() -> bool:
        return provider_sinks.sms.in_flight == 1

    await eventually(first_at_the_provider)
    await publish(nats_bus, dispatch_on("sms", waiting, profile_id="prof_says_stop"))

    async def second_waits_for_the_slot() -> bool:
        return throttle.waiting == 1

    await eventually(second_waits_for_the_slot)
    # Allowed when it was checked; the person says STOP while it waits, longer than recheck_after_seconds.
    suppressions.opted_out.add("prof_says_stop")
    await asyncio.sleep(0.3)
    provider_sinks.sms.release()

    await published_state(listener, first, SENT)
    failed = await published_state(listener, waiting, FAILED)
    assert failed.reason == "suppressed at send time: SUPPRESSION_REASON_OPT_OUT"
    assert provider_sinks.sms.for_campaign(waiting) == []
    assert states(await get_message(channels, waiting)) == ["DELIVERY_STATE_QUEUED", "DELIVERY_STATE_FAILED"]
    # Asked twice, before and after the wait; the first message, which did not wait, once.
    assert suppressions.asked.count(("prof_says_stop", channel_pb2.CHANNEL_SMS)) == 2
    assert suppressions.asked.count(("prof_first", channel_pb2.CHANNEL_SMS)) == 1


async def test_a_request_refused_before_it_became_a_message_is_failed_with_the_reason(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    """Dead-lettered before any row (a profile ID channels cannot send under): GetMessage answered NOT_FOUND, as for
    a mistyped ID, and campaigns heard nothing. The consumer's dead-letter hook makes it FAILED with the reason."""
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", campaign_id, profile_id="p" * 129))
    failed = await published_state(listener, campaign_id, FAILED)
    assert failed.reason == "request dead-lettered: profile_id is 129 characters; at most 128"
    message = await get_message(channels, campaign_id)
    assert states(message) == ["DELIVERY_STATE_QUEUED", "DELIVERY_STATE_FAILED"]
    assert message.timeline[-1].detail == failed.reason and provider_sinks.sms.received == []


async def test_a_message_whose_last_hand_over_never_settled_is_ambiguous_and_listed_for_an_operator(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    """A process stopped during the last allowed hand-over: the next delivery is dead-lettered before the handler
    (plumbing.bus), which alone turned a leftover SENDING into AMBIGUOUS, so the message stayed SENDING for good, not
    listed and not resolvable. Its dead-letter hook settles it as the handler would have, once; a message held in
    QUEUED is FAILED with the reason, and a settled one is left as it is."""
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    handler = next(task for task in channels.process.tasks if task.name == "dispatch-consumer").run.__self__.handler  # type: ignore[attr-defined]
    unsettled, held, sent = new_campaign_id(), new_campaign_id(), new_campaign_id()
    await left_sending(channels, unsettled, "CHANNEL_SMS")
    max_deliver = streams.CHANNELS_DISPATCH.max_deliver
    over = Delivery("msg-over", streams.DISPATCH_REQUESTED, num_delivered=max_deliver + 1, stream="XSELL_CAMPAIGNS")
    reason = f"delivered {max_deliver + 1} times ({max_deliver} allowed) without being settled: a process stopped"
    for _ in range(2):  # told again (its letter held, then written): nothing more
        await handler.dead_lettered(dispatch_on("sms", unsettled), over, reason)

    ambiguous = await published_state(listener, unsettled, AMBIGUOUS)
    assert ambiguous.reason.startswith("the last allowed hand-over's answer was never recorded")
    assert ambiguous.reason.endswith(f"; request dead-lettered: {reason}")
    assert states(await get_message(channels, unsettled))[-1:] == ["DELIVERY_STATE_AMBIGUOUS"]
    listed = await channels.stub.ListAmbiguousMessages(service_pb2.ListAmbiguousMessagesRequest())
    assert unsettled in [message.campaign_id for message in listed.messages]

    async with channels.db.transaction() as session:
        await store.insert_queued_if_absent(
            session, campaign_id=held, channel="CHANNEL_SMS", profile_id="prof_1", now=datetime.now(UTC)
        )
    await handler.dead_lettered(dispatch_on("sms", held), over, "failed 8 times: OperationalError('locked')")
    assert (await published_state(listener, held, FAILED)).reason == (
        "request dead-lettered: failed 8 times: OperationalError('locked')"
    )

    await publish(nats_bus, dispatch_on("sms", sent))
    await published_state(listener, sent, SENT)
    before = await get_message(channels, sent)
    await handler.dead_lettered(dispatch_on("sms", sent), over, reason)
    assert await get_message(channels, sent) == before


async def test_a_give_up_counts_the_deliveries_and_says_how_many_were_handed_over(
    start_channels: StartChannels, smtp_relay: SmtpRelay, provider_sinks: ProviderSinks, listener: Listener
) -> None:
    """The last delivery is the first hand-over (the earlier ones were held back before any, segments away): the
    reason said 'gave up after 1 attempts' after eight, where every other give-up counts the deliveries."""
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    handler = next(task for task in channels.process.tasks if task.name == "dispatch-consumer").run.__self__.handler  # type: ignore[attr-defined]
    provider_sinks.sms.fail_next(Fault.UNAVAILABLE)
    campaign_id = new_campaign_id()
    max_deliver = streams.CHANNELS_DISPATCH.max_deliver
    last = Delivery("msg-last", streams.DISPATCH_REQUESTED, num_delivered=max_deliver)
    with pytest.raises(PermanentError, match="gave up"):
        await handler(dispatch_on("sms", campaign_id), last)
    failed = await published_state(listener, campaign_id, FAILED)
    assert failed.reason.startswith(f"gave up after {max_deliver} attempts (1 handed over): sms HTTP 503")
