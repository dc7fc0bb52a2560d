"""Delivery receipts over real gRPC: they settle ambiguous messages and complete the timeline a user reads."""

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import StatusCode

from devstack.nats_server import free_port
from devstack.provider_sinks import Fault, ProviderSinks
from gateway.app import build as build_gateway
from gateway.settings import GatewaySettings
from plumbing.bus import Bus
from plumbing.ids import new_id
from plumbing.metrics import tally
from plumbing.telemetry import outreach_ids
from services import streams
from services.channels import store
from services.channels.api import RECEIPTS_METRIC
from services.channels.resend import resend_reason
from tests.integration.channels.conftest import Channels, Listener, SmtpRelay, StartChannels
from tests.integration.channels.support import (
    dispatch,
    dispatch_on,
    get_message,
    handled,
    left_sending,
    new_campaign_id,
    publish,
    published_state,
    updates,
)
from tests.waiting import eventually
from xsell.channels.v1 import events_pb2, resources_pb2, service_pb2

DELIVERED = resources_pb2.DELIVERY_STATE_DELIVERED
SENT = resources_pb2.DELIVERY_STATE_SENT


async def _heard(listener: Listener, subject: str, campaign_id: str, count: int) -> bool:
    return len(listener.on(subject, campaign_id)) >= count


async def _receipt(channels: Channels, campaign_id: str, state: int, **fields: str) -> resources_pb2.Message:
    request = service_pb2.RecordDeliveryReceiptRequest(
        request_id=new_id("rcpt_"), campaign_id=campaign_id, state=state, **fields
    )  # type: ignore[arg-type]
    return (await channels.stub.RecordDeliveryReceipt(request)).message


def _timeline(message: resources_pb2.Message) -> list[str]:
    return [
        resources_pb2.DeliveryState.Name(entry.delivery_state)
        if entry.WhichOneof("step") == "delivery_state"
        else resources_pb2.EngagementKind.Name(entry.engagement_kind)
        for entry in message.timeline
    ]


async def test_a_receipt_settles_an_ambiguous_sms_and_a_redelivery_still_sends_nothing(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    provider_sinks.sms.fail_next(Fault.ACCEPT_THEN_DROP)
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", campaign_id))
    await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_AMBIGUOUS)

    message = await _receipt(channels, campaign_id, DELIVERED, provider_message_id="exotel-sid-1")
    assert message.state == DELIVERED
    assert message.provider_message_id == "exotel-sid-1"
    assert message.timeline[-1].detail == "receipt after AMBIGUOUS"
    delivered = await published_state(listener, campaign_id, DELIVERED)
    assert delivered.campaign_id == campaign_id

    seq = await publish(nats_bus, dispatch_on("sms", campaign_id))
    await handled(nats_bus, seq)
    assert len(provider_sinks.sms.for_campaign(campaign_id)) == 1
    assert (await get_message(channels, campaign_id)).state == DELIVERED


async def test_the_timeline_shows_queued_sent_delivered_opened_clicked_and_replied(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("whatsapp", campaign_id))
    await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_SENT)

    await _receipt(channels, campaign_id, DELIVERED)
    # A late failure receipt does not undo the delivery.
    after_failure = await _receipt(channels, campaign_id, resources_pb2.DELIVERY_STATE_FAILED, reason="131026")
    assert after_failure.state == DELIVERED
    for kind in (resources_pb2.ENGAGEMENT_KIND_OPENED, resources_pb2.ENGAGEMENT_KIND_REPLIED):
        await channels.stub.RecordEngagement(
            service_pb2.RecordEngagementRequest(
                request_id=new_id("eng_"), campaign_id=campaign_id, kind=kind, reply_text="YES"
            )
        )

    message = await get_message(channels, campaign_id)
    assert _timeline(message) == [
        "DELIVERY_STATE_QUEUED",
        "DELIVERY_STATE_SENDING",
        "DELIVERY_STATE_SENT",
        "DELIVERY_STATE_DELIVERED",
        "ENGAGEMENT_KIND_OPENED",
        "ENGAGEMENT_KIND_REPLIED",
    ]
    # The relay publishes the receipt's event after its commit: wait for it, then check nothing followed it (the late
    # failure receipt changed nothing, so it published nothing).
    await published_state(listener, campaign_id, DELIVERED)
    assert [u.state for u in updates(listener, campaign_id)][-1] == DELIVERED


async def test_a_failure_receipt_after_acceptance_fails_the_message_with_the_providers_reason(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", campaign_id))
    await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_SENT)

    request = service_pb2.RecordDeliveryReceiptRequest(
        request_id=new_id("rcpt_"),
        campaign_id=campaign_id,
        state=resources_pb2.DELIVERY_STATE_FAILED,
        reason="failed-dnd: number +919876543210 is on DND",
    )
    failed_before = tally("xsell.channels", RECEIPTS_METRIC, labels=("channel", "state")).value(("sms", "failed"))
    first = (await channels.stub.RecordDeliveryReceipt(request)).message
    again = (await channels.stub.RecordDeliveryReceipt(request)).message
    assert first == again
    # Counted once, as xsell_channels_receipts_total{channel="sms", state="failed"}: dispatch outcomes had said "sent"
    # only, and no metric showed a provider failing what it had taken.
    failed_after = tally("xsell.channels", RECEIPTS_METRIC, labels=("channel", "state")).value(("sms", "failed"))
    assert failed_after == failed_before + 1
    assert first.state == resources_pb2.DELIVERY_STATE_FAILED
    assert "9876543210" not in first.timeline[-1].detail and "failed-dnd" in first.timeline[-1].detail
    failed = await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_FAILED)
    assert "failed-dnd" in failed.reason
    # The failure is marked in the outreach's trace, where an SRE looks for it; the repeat changed nothing.
    receipts = [
        span
        for span in channels.spans.get_finished_spans()
        if span.name == "channels.receipt" and span.attributes["campaign.id"] == campaign_id
    ]
    assert [span.status.status_code for span in receipts] == [StatusCode.ERROR, StatusCode.UNSET]
    assert receipts[0].status.description == first.timeline[-1].detail


async def test_a_failure_receipt_without_a_reason_is_refused_naming_the_field(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    """Applied, it left the message FAILED with no reason: the timeline's step said only "receipt", and DeliveryUpdated
    carried reason "" to campaigns and attribution. ResolveAmbiguousMessage already requires one."""
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", campaign_id))
    await published_state(listener, campaign_id, SENT)

    for empty in ("", "  \t\n", "\u00a0\u2009"):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _receipt(channels, campaign_id, resources_pb2.DELIVERY_STATE_FAILED, reason=empty)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (raised.value.details() or "").startswith("reason: reason is required with DELIVERY_STATE_FAILED")
    assert (await get_message(channels, campaign_id)).state == SENT
    message = await _receipt(channels, campaign_id, resources_pb2.DELIVERY_STATE_FAILED, reason=" exotel failed ")
    assert (message.state, message.timeline[-1].detail) == (
        resources_pb2.DELIVERY_STATE_FAILED,
        "receipt: exotel failed",
    )
    failed = await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_FAILED)
    assert failed.reason == "exotel failed"
    assert [u.reason for u in updates(listener, campaign_id) if u.state == resources_pb2.DELIVERY_STATE_FAILED] == [
        "exotel failed"
    ]


@pytest.mark.parametrize(
    ("campaign_id", "state", "fields", "code"),
    [
        ("CSELL-NOV-T99-9999", DELIVERED, {}, grpc.StatusCode.NOT_FOUND),
        ("CSELL-NOV-T99-9999", resources_pb2.DELIVERY_STATE_AMBIGUOUS, {}, grpc.StatusCode.INVALID_ARGUMENT),
        ("", DELIVERED, {}, grpc.StatusCode.INVALID_ARGUMENT),
        ("CSELL-NOV-T99-9999", DELIVERED, {"provider_message_id": "x" * 301}, grpc.StatusCode.INVALID_ARGUMENT),
        # Not echoed: 10,000 characters twice passed gRPC's 16 KiB limit on trailers (RESOURCE_EXHAUSTED).
        ("C" * 10_000, DELIVERED, {}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_receipts_for_unknown_messages_or_states_are_refused(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    campaign_id: str,
    state: int,
    fields: dict[str, str],
    code: grpc.StatusCode,
) -> None:
    channels = await start_channels(smtp_relay.port)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _receipt(channels, campaign_id, state, **fields)
    assert raised.value.code() is code
    if fields:
        assert "provider_message_id" in (raised.value.details() or "")
    assert len(raised.value.details() or "") < 300


async def test_a_report_timed_before_the_message_or_ahead_of_our_clock_reads_when_it_can_have_happened(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    listener: Listener,
    nats_bus: Bus,
) -> None:
    """A provider's clock in 2030, or a 1970 default: the report is kept (refused, the provider would only send it
    again), timed when it can have happened: not before the message left, not after the report reached us."""
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("whatsapp", campaign_id))
    await published_state(listener, campaign_id, SENT)
    before = datetime.now(UTC)
    far_ahead, epoch = Timestamp(), Timestamp()
    far_ahead.FromDatetime(datetime(2030, 1, 1, tzinfo=UTC))
    epoch.FromDatetime(datetime(1970, 1, 1, tzinfo=UTC))
    delivered = await channels.stub.RecordDeliveryReceipt(
        service_pb2.RecordDeliveryReceiptRequest(
            request_id=new_id("rcpt_"), campaign_id=campaign_id, state=DELIVERED, occur_time=far_ahead
        )
    )
    for kind, at in ((resources_pb2.ENGAGEMENT_KIND_OPENED, epoch), (resources_pb2.ENGAGEMENT_KIND_CLICKED, far_ahead)):
        await channels.stub.RecordEngagement(
            service_pb2.RecordEngagementRequest(
                request_id=new_id("eng_"), campaign_id=campaign_id, kind=kind, occur_time=at
            )
        )
    after = datetime.now(UTC)
    message = await get_message(channels, campaign_id)
    assert _timeline(message) == [
        "DELIVERY_STATE_QUEUED",
        "DELIVERY_STATE_SENDING",
        "DELIVERY_STATE_SENT",
        "ENGAGEMENT_KIND_OPENED",
        "DELIVERY_STATE_DELIVERED",
        "ENGAGEMENT_KIND_CLICKED",
    ]
    times = [entry.occur_time.ToDatetime(tzinfo=UTC) for entry in message.timeline]
    assert times[3] == times[2]  # the open "in 1970" reads from the provider's acceptance
    assert before <= times[4] <= after and before <= times[5] <= after  # those "in 2030" from when they reached us
    assert delivered.message.state == DELIVERED
    # The events leave through the outbox relay after the commit: wait for both (the open and the click).
    await eventually(lambda: _heard(listener, streams.ENGAGEMENT_RECORDED, campaign_id, 2))
    opened = [
        events_pb2.EngagementRecorded.FromString(h.data) for h in listener.on(streams.ENGAGEMENT_RECORDED, campaign_id)
    ]
    assert opened and all(e.occur_time.ToDatetime(tzinfo=UTC) < datetime(2029, 1, 1, tzinfo=UTC) for e in opened)
    assert all(e.occur_time.ToDatetime(tzinfo=UTC) >= times[2] for e in opened)


@pytest.mark.parametrize(
    "occur_time",
    [Timestamp(seconds=2**40), Timestamp(seconds=-(2**40)), Timestamp(seconds=0, nanos=-1)],
    ids=["past-9999", "before-year-1", "negative-nanos"],
)
async def test_a_time_outside_what_a_timestamp_holds_is_the_callers_error(
    start_channels: StartChannels, smtp_relay: SmtpRelay, occur_time: Timestamp
) -> None:
    channels = await start_channels(smtp_relay.port)
    receipt = service_pb2.RecordDeliveryReceiptRequest(
        request_id=new_id("rcpt_"), campaign_id="CSELL-NOV-T99-9999", state=DELIVERED, occur_time=occur_time
    )
    engagement = service_pb2.RecordEngagementRequest(
        request_id=new_id("eng_"),
        campaign_id="CSELL-NOV-T99-9999",
        kind=resources_pb2.ENGAGEMENT_KIND_OPENED,
        occur_time=occur_time,
    )
    for call, request in (
        (channels.stub.RecordDeliveryReceipt, receipt),
        (channels.stub.RecordEngagement, engagement),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(request)  # type: ignore[operator]
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # was INTERNAL
        assert "occur_time" in (raised.value.details() or "")


async def test_a_receipt_cannot_settle_a_message_no_provider_was_given(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    """A push refused before its hand-over (no device token) is FAILED with attempts 0: a DELIVERED receipt for it
    could only be forged or mistaken, and applied it marked delivered what never went."""
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("push", campaign_id, device_token=""))
    await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_FAILED)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _receipt(channels, campaign_id, DELIVERED)
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "never handed to a provider" in (raised.value.details() or "")
    message = (await channels.stub.GetMessage(service_pb2.GetMessageRequest(campaign_id=campaign_id))).message
    assert message.state == resources_pb2.DELIVERY_STATE_FAILED
    assert provider_sinks.push.received == []


async def test_a_reply_quoting_the_providers_message_id_is_recorded_on_its_outreach(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch_on("whatsapp", campaign_id))
    await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_SENT)
    wamid = (await get_message(channels, campaign_id)).provider_message_id

    response = await channels.stub.RecordEngagement(
        service_pb2.RecordEngagementRequest(
            request_id=new_id("eng_"),
            provider_message_id=wamid,
            kind=resources_pb2.ENGAGEMENT_KIND_REPLIED,
            reply_text="YES",
        )
    )
    assert response.message.campaign_id == campaign_id
    assert response.message.timeline[-1].engagement_kind == resources_pb2.ENGAGEMENT_KIND_REPLIED

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channels.stub.RecordEngagement(
            service_pb2.RecordEngagementRequest(
                request_id=new_id("eng_"),
                provider_message_id="wamid.unknown",
                kind=resources_pb2.ENGAGEMENT_KIND_REPLIED,
            )
        )
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


async def test_provider_reports_reach_the_timeline_through_the_gateways_webhooks(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
    tmp_path: Path,
) -> None:
    """Real channels, real gateway, provider servers that call back like Exotel and Meta do."""
    gateway_http = free_port()
    channels = await start_channels(
        smtp_relay.port,
        sms_status_callback_url=f"http://127.0.0.1:{gateway_http}/webhooks/sms/exotel/callback-token",
        **provider_sinks.channels_settings(),
    )
    gateway = await build_gateway(
        GatewaySettings(
            grpc_port=0,
            http_port=gateway_http,
            var_dir=tmp_path,
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
            channels_target=f"127.0.0.1:{channels.process.server.port}",
            whatsapp_app_secret=provider_sinks.credentials.whatsapp_app_secret,  # type: ignore[arg-type]
            sms_callback_token="callback-token",  # type: ignore[arg-type]
        ),
        TracerProvider(),
    )
    await gateway.start()
    provider_sinks.whatsapp_webhook_url = f"http://127.0.0.1:{gateway_http}/webhooks/whatsapp"
    try:
        sms, whatsapp = new_campaign_id(), new_campaign_id()
        await publish(nats_bus, dispatch_on("sms", sms))
        await publish(nats_bus, dispatch_on("whatsapp", whatsapp))

        await published_state(listener, sms, DELIVERED)
        await published_state(listener, whatsapp, DELIVERED)
        for campaign_id in (sms, whatsapp):
            message = await get_message(channels, campaign_id)
            # The sinks call back as soon as they accept, so the receipt may be recorded before the hand-over's own
            # outcome: then it settles the message from SENDING and the ledger records no SENT after it.
            assert _timeline(message)[-2:] in (
                ["DELIVERY_STATE_SENT", "DELIVERY_STATE_DELIVERED"],
                ["DELIVERY_STATE_SENDING", "DELIVERY_STATE_DELIVERED"],
            )
        assert provider_sinks.sms.callback_errors == provider_sinks.whatsapp.callback_errors == []
    finally:
        await gateway.stop(0)


async def test_an_operator_lists_ambiguous_messages_and_settles_one_by_hand_once(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    ambiguous = [new_campaign_id() for _ in range(3)]
    for campaign_id in ambiguous:
        # The gateway accepts the SMS and drops the connection before answering: nobody knows whether it went.
        provider_sinks.sms.fail_next(Fault.ACCEPT_THEN_DROP)
        await publish(nats_bus, dispatch_on("sms", campaign_id))
        await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_AMBIGUOUS)

    listed: list[str] = []
    token = ""
    while True:
        page = await channels.stub.ListAmbiguousMessages(
            service_pb2.ListAmbiguousMessagesRequest(page_size=2, page_token=token)
        )
        assert len(page.messages) <= 2
        listed.extend(m.campaign_id for m in page.messages if m.campaign_id in ambiguous)
        token = page.next_page_token
        if not token:
            break
    assert listed == ambiguous  # the longest ambiguous first
    # A size past the maximum is served at it (AIP-158), as every list does; a negative one is refused by name.
    larger = await channels.stub.ListAmbiguousMessages(service_pb2.ListAmbiguousMessagesRequest(page_size=10_000))
    assert {m.campaign_id for m in larger.messages} >= set(ambiguous)
    with pytest.raises(grpc.aio.AioRpcError) as negative:
        await channels.stub.ListAmbiguousMessages(service_pb2.ListAmbiguousMessagesRequest(page_size=-1))
    assert negative.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "page_size" in (negative.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await channels.stub.ListAmbiguousMessages(service_pb2.ListAmbiguousMessagesRequest(page_token="nonsense"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    settle = service_pb2.ResolveAmbiguousMessageRequest(
        request_id=new_id("res_"),
        campaign_id=ambiguous[0],
        state=resources_pb2.DELIVERY_STATE_SENT,
        reason="in Exotel's report: accepted as b6a1c2d3 for +91 98765 43210",
    )
    for refused, field in (
        (service_pb2.ResolveAmbiguousMessageRequest(**{**_fields(settle), "state": 0}), "state"),
        (service_pb2.ResolveAmbiguousMessageRequest(**{**_fields(settle), "reason": " "}), "reason"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await channels.stub.ResolveAmbiguousMessage(refused)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (error.value.details() or "")
    message = (await channels.stub.ResolveAmbiguousMessage(settle)).message
    assert message.state == resources_pb2.DELIVERY_STATE_SENT
    assert message.timeline[-1].detail.startswith("settled by hand: in Exotel's report")
    assert "98765" not in message.timeline[-1].detail
    await published_state(listener, ambiguous[0], resources_pb2.DELIVERY_STATE_SENT)
    # The same request again is answered as before; another one finds nothing ambiguous to settle.
    assert (await channels.stub.ResolveAmbiguousMessage(settle)).message == message
    with pytest.raises(grpc.aio.AioRpcError) as settled:
        await channels.stub.ResolveAmbiguousMessage(
            service_pb2.ResolveAmbiguousMessageRequest(**{**_fields(settle), "request_id": new_id("res_")})
        )
    assert settled.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    left = await channels.stub.ListAmbiguousMessages(service_pb2.ListAmbiguousMessagesRequest())
    assert [m.campaign_id for m in left.messages if m.campaign_id in ambiguous] == ambiguous[1:]
    # Nothing was sent again.
    assert all(len(provider_sinks.sms.for_campaign(c)) == 1 for c in ambiguous)


def _fields(request: service_pb2.ResolveAmbiguousMessageRequest) -> dict[str, object]:
    return {field.name: value for field, value in request.ListFields()}


async def test_receipts_arriving_together_each_get_their_own_answer_in_their_own_trace(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    provider_sinks: ProviderSinks,
    nats_bus: Bus,
    listener: Listener,
) -> None:
    """Concurrent receipts share transactions (group commit): each is applied in arrival order as it would be alone,
    a refused one fails alone, and each DeliveryUpdated continues its own outreach's trace."""
    channels = await start_channels(smtp_relay.port, **provider_sinks.channels_settings())
    campaign_ids = [new_campaign_id() for _ in range(12)]
    for campaign_id in campaign_ids:
        await publish(nats_bus, dispatch_on("sms", campaign_id))
    for campaign_id in campaign_ids:
        await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_SENT)

    def receipt(request_id: str, campaign_id: str, state: int = DELIVERED) -> service_pb2.RecordDeliveryReceiptRequest:
        reason = "exotel failed" if state == resources_pb2.DELIVERY_STATE_FAILED else ""
        return service_pb2.RecordDeliveryReceiptRequest(
            request_id=request_id,
            campaign_id=campaign_id,
            state=state,  # type: ignore[arg-type]
            reason=reason,
        )

    settled = await asyncio.gather(*(channels.stub.RecordDeliveryReceipt(receipt(f"r-{c}", c)) for c in campaign_ids))
    assert [answer.message.state for answer in settled] == [DELIVERED] * len(campaign_ids)
    # Then, together: a provider's retry (the same answer), an id reused for another receipt, an unknown message.
    first, second = campaign_ids[:2]
    retried, reused, unknown = await asyncio.gather(
        channels.stub.RecordDeliveryReceipt(receipt(f"r-{first}", first)),
        channels.stub.RecordDeliveryReceipt(receipt(f"r-{second}", second, resources_pb2.DELIVERY_STATE_FAILED)),
        channels.stub.RecordDeliveryReceipt(receipt("r-unknown", "CSELL-NO-SUCH-MESSAGE")),
        return_exceptions=True,
    )
    assert retried == settled[0]
    assert isinstance(reused, grpc.aio.AioRpcError) and reused.code() is grpc.StatusCode.ABORTED
    assert isinstance(unknown, grpc.aio.AioRpcError) and unknown.code() is grpc.StatusCode.NOT_FOUND
    for campaign_id in campaign_ids:
        await published_state(listener, campaign_id, DELIVERED)
        [delivered] = [
            heard
            for heard in listener.on(streams.DELIVERY_UPDATED, campaign_id)
            if events_pb2.DeliveryUpdated.FromString(heard.data).state == DELIVERED
        ]
        trace_id = delivered.headers["traceparent"].split("-")[1]
        assert trace_id == f"{outreach_ids(campaign_id)[0]:032x}"
    # Receipts about one message together: each moves it on for the next, and a copy of one (its request_id again,
    # as a provider's quick retry sends it) gets that one's answer, whether or not they share a transaction.
    extra = new_campaign_id()
    await publish(nats_bus, dispatch_on("sms", extra))
    await published_state(listener, extra, resources_pb2.DELIVERY_STATE_SENT)
    delivered_once, its_copy, sent_late = await asyncio.gather(
        channels.stub.RecordDeliveryReceipt(receipt("x-delivered", extra)),
        channels.stub.RecordDeliveryReceipt(receipt("x-delivered", extra)),
        channels.stub.RecordDeliveryReceipt(receipt("x-sent", extra, resources_pb2.DELIVERY_STATE_SENT)),
    )
    assert its_copy == delivered_once
    assert sent_late.message.state in (SENT, DELIVERED)  # whichever way round they came, SENT changes nothing
    failed_after = await channels.stub.RecordDeliveryReceipt(
        receipt("x-failed", extra, resources_pb2.DELIVERY_STATE_FAILED)
    )
    assert failed_after.message.state == DELIVERED  # a failure report does not undo a delivery
    steps = [e.delivery_state for e in failed_after.message.timeline if e.WhichOneof("step") == "delivery_state"]
    assert steps.count(DELIVERED) == 1
    await published_state(listener, extra, DELIVERED)
    states = [events_pb2.DeliveryUpdated.FromString(h.data).state for h in listener.on(streams.DELIVERY_UPDATED, extra)]
    assert states.count(DELIVERED) == 1 and resources_pb2.DELIVERY_STATE_FAILED not in states


async def _crash_left_ambiguous(channels: Channels, nats_bus: Bus, listener: Listener) -> str:
    """A message whose process wrote its intent, handed it over and died: its redelivery marks it AMBIGUOUS, counting
    no attempt (its attempts stay 0)."""
    campaign_id = new_campaign_id()
    # A previous process wrote its intent, handed the message over (or not) and died before recording it.
    await left_sending(channels, campaign_id, "CHANNEL_EMAIL")
    seq = await publish(nats_bus, dispatch(campaign_id))
    await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_AMBIGUOUS)
    await handled(nats_bus, seq)
    return campaign_id


async def test_a_late_report_of_a_first_hand_over_settles_a_message_taken_back_for_another(
    start_channels: StartChannels, smtp_relay: SmtpRelay, nats_bus: Bus, listener: Listener
) -> None:
    """resend.py takes a silent AMBIGUOUS message back to QUEUED (attempts still 0) to hand it over again; the
    provider's report of the first hand-over, coming then, settles it, so the hand-over again is a skip. Refused as
    "never handed over", it was lost and the message sent twice."""
    channels = await start_channels(smtp_relay.port)
    campaign_id = await _crash_left_ambiguous(channels, nats_bus, listener)
    async with channels.db.transaction() as session:
        assert await store.mark_resent(session, campaign_id, now=datetime.now(UTC), reason=resend_reason("email", 600))
    assert (await _receipt(channels, campaign_id, DELIVERED)).state == DELIVERED


async def test_a_report_after_an_operator_settled_a_crash_by_hand_is_still_recorded(
    start_channels: StartChannels, smtp_relay: SmtpRelay, nats_bus: Bus, listener: Listener
) -> None:
    channels = await start_channels(smtp_relay.port)
    campaign_id = await _crash_left_ambiguous(channels, nats_bus, listener)
    await channels.stub.ResolveAmbiguousMessage(
        service_pb2.ResolveAmbiguousMessageRequest(
            request_id=new_id("res_"),
            campaign_id=campaign_id,
            state=resources_pb2.DELIVERY_STATE_FAILED,
            reason="not in the relay's log",
        )
    )
    assert (await _receipt(channels, campaign_id, DELIVERED)).state == DELIVERED
