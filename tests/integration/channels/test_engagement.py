"""RecordEngagement and GetMessage over real gRPC, NATS and SQLite / PostgreSQL; the migration matches the tables."""

import asyncio
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.trace import StatusCode

from plumbing.bus import Bus
from plumbing.ids import new_id
from plumbing.telemetry import outreach_ids
from services import streams
from tests.integration.channels.conftest import Listener, SmtpRelay, StartChannels
from tests.integration.channels.support import dispatch, new_campaign_id, publish, published_state
from tests.waiting import eventually
from xsell.channels.v1 import events_pb2, resources_pb2, service_pb2

OPENED, CLICKED = resources_pb2.ENGAGEMENT_KIND_OPENED, resources_pb2.ENGAGEMENT_KIND_CLICKED
SENT = resources_pb2.DELIVERY_STATE_SENT


async def _sent_message(start_channels: StartChannels, relay: SmtpRelay, bus: Bus, listener: Listener):  # type: ignore[no-untyped-def]
    channels = await start_channels(relay.port)
    campaign_id = new_campaign_id()
    await publish(bus, dispatch(campaign_id))
    await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_SENT)
    return channels, campaign_id


async def test_click_is_recorded_once_published_and_shown_on_the_timeline(
    start_channels: StartChannels, smtp_relay: SmtpRelay, nats_bus: Bus, listener: Listener
) -> None:
    channels, campaign_id = await _sent_message(start_channels, smtp_relay, nats_bus, listener)
    clicked_at = Timestamp()
    clicked_at.FromDatetime(datetime.now(UTC))
    request = service_pb2.RecordEngagementRequest(
        request_id=new_id("eng_"),
        campaign_id=campaign_id,
        kind=resources_pb2.ENGAGEMENT_KIND_CLICKED,
        url="https://bank.example.in/apply?o=T06&pan=ABCDE1234F",
        occur_time=clicked_at,
    )
    response = await channels.stub.RecordEngagement(request)

    last = response.message.timeline[-1]
    assert last.engagement_kind == resources_pb2.ENGAGEMENT_KIND_CLICKED
    assert last.detail == "bank.example.in"
    assert response.message.state == resources_pb2.DELIVERY_STATE_SENT

    async def recorded() -> list[events_pb2.EngagementRecorded]:
        heard = listener.on(streams.ENGAGEMENT_RECORDED, campaign_id)
        return [events_pb2.EngagementRecorded.FromString(h.data) for h in heard]

    events = await eventually(recorded)
    assert events[0].kind == resources_pb2.ENGAGEMENT_KIND_CLICKED
    # The event stays 14 days in the stream: the link without its query (the PAN in it).
    assert events[0].url == "https://bank.example.in/apply"
    assert events[0].channel == response.message.channel
    assert events[0].occur_time == clicked_at

    # The gateway retrying the same request_id gets the same answer and records nothing more.
    again = await channels.stub.RecordEngagement(request)
    assert again == response
    got = (await channels.stub.GetMessage(service_pb2.GetMessageRequest(campaign_id=campaign_id))).message
    kinds = [e.engagement_kind for e in got.timeline if e.WhichOneof("step") == "engagement_kind"]
    assert kinds == [resources_pb2.ENGAGEMENT_KIND_CLICKED]
    assert got.timeline[-1].detail == "bank.example.in"
    assert all("pan=" not in e.detail for e in got.timeline)
    times = [e.occur_time.ToDatetime() for e in got.timeline]
    assert times == sorted(times)


async def test_unknown_campaign_id_is_not_found_and_an_unset_kind_is_invalid(
    start_channels: StartChannels, smtp_relay: SmtpRelay, nats_bus: Bus, listener: Listener
) -> None:
    channels, campaign_id = await _sent_message(start_channels, smtp_relay, nats_bus, listener)
    unknown = "CSELL-NOV-T06-9999"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channels.stub.GetMessage(service_pb2.GetMessageRequest(campaign_id=unknown))
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    assert f"channels has no record of campaign ID {unknown} yet" in (raised.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channels.stub.RecordEngagement(
            service_pb2.RecordEngagementRequest(
                request_id=new_id("eng_"), campaign_id=unknown, kind=resources_pb2.ENGAGEMENT_KIND_OPENED
            )
        )
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    assert "or the ID may be wrong" in (raised.value.details() or "")
    # Without a request_id the request itself is wrong, whatever it names: INVALID_ARGUMENT before any look-up.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channels.stub.RecordEngagement(
            service_pb2.RecordEngagementRequest(campaign_id=unknown, kind=resources_pb2.ENGAGEMENT_KIND_OPENED)
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in (raised.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channels.stub.RecordEngagement(
            service_pb2.RecordEngagementRequest(request_id=new_id("eng_"), campaign_id=campaign_id)
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "kind" in (raised.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channels.stub.RecordEngagement(
            service_pb2.RecordEngagementRequest(campaign_id=campaign_id, kind=resources_pb2.ENGAGEMENT_KIND_OPENED)
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in (raised.value.details() or "")

    # Nothing of the rejected requests was written.
    got = (await channels.stub.GetMessage(service_pb2.GetMessageRequest(campaign_id=campaign_id))).message
    assert not any(e.WhichOneof("step") == "engagement_kind" for e in got.timeline)
    assert listener.on(streams.ENGAGEMENT_RECORDED, campaign_id) == []


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        (resources_pb2.ENGAGEMENT_KIND_OPENED, {}),
        (resources_pb2.ENGAGEMENT_KIND_CLICKED, {"url": "https://bank.example.in/apply"}),
        (resources_pb2.ENGAGEMENT_KIND_REPLIED, {"reply_text": "yes call me"}),
        (resources_pb2.ENGAGEMENT_KIND_BOUNCED, {"detail": "5.1.1 permanent"}),
        (resources_pb2.ENGAGEMENT_KIND_COMPLAINED, {"detail": "abuse"}),
        (resources_pb2.ENGAGEMENT_KIND_UNSUBSCRIBED, {}),
    ],
    ids=["opened", "clicked", "replied", "bounced", "complained", "unsubscribed"],
)
async def test_engagement_on_a_message_no_provider_was_given_is_refused_and_published_to_no_one(
    start_channels: StartChannels,
    smtp_relay: SmtpRelay,
    nats_bus: Bus,
    listener: Listener,
    kind: int,
    fields: dict[str, str],
) -> None:
    """An e-mail refused before its hand-over (no address) reached nobody: an open, a click or a bounce of it could only
    be forged or mistaken, and was recorded and published to segments, campaigns and attribution as the person's."""
    channels, sent = await _sent_message(start_channels, smtp_relay, nats_bus, listener)
    never_sent = new_campaign_id()
    await publish(nats_bus, dispatch(never_sent, to_address=""))
    await published_state(listener, never_sent, resources_pb2.DELIVERY_STATE_FAILED)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channels.stub.RecordEngagement(
            service_pb2.RecordEngagementRequest(request_id=new_id("eng_"), campaign_id=never_sent, kind=kind, **fields)
        )
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert f"campaign ID {never_sent} was never handed to a provider (it is FAILED)" in (raised.value.details() or "")
    got = (await channels.stub.GetMessage(service_pb2.GetMessageRequest(campaign_id=never_sent))).message
    assert not any(e.WhichOneof("step") == "engagement_kind" for e in got.timeline)
    # The same engagement on a message handed over is recorded; its event is published after any of the other's.
    await channels.stub.RecordEngagement(
        service_pb2.RecordEngagementRequest(request_id=new_id("eng_"), campaign_id=sent, kind=kind, **fields)
    )
    await listener.eventually_on(streams.ENGAGEMENT_RECORDED, sent)
    assert listener.on(streams.ENGAGEMENT_RECORDED, never_sent) == []


async def test_a_bounce_keeps_its_status_without_the_address_and_mail_goes_out_from_the_return_path(
    start_channels: StartChannels, smtp_relay: SmtpRelay, nats_bus: Bus, listener: Listener
) -> None:
    channels = await start_channels(smtp_relay.port, return_path="bounces@mail.test.in")
    campaign_id = new_campaign_id()
    await publish(nats_bus, dispatch(campaign_id))
    await published_state(listener, campaign_id, resources_pb2.DELIVERY_STATE_SENT)
    # Bounces and complaint reports go back to the envelope sender, the gateway's bounce mailbox.
    sent = [m["X-Xsell-Campaign-Id"] for m in smtp_relay.mailbox.messages].index(campaign_id)
    assert smtp_relay.mailbox.senders[sent] == "bounces@mail.test.in"
    response = await channels.stub.RecordEngagement(
        service_pb2.RecordEngagementRequest(
            request_id=new_id("eng_"),
            campaign_id=campaign_id,
            kind=resources_pb2.ENGAGEMENT_KIND_BOUNCED,
            detail="5.1.1 permanent for priya@example.in at +91 98765 43210",
        )
    )
    last = response.message.timeline[-1]
    assert last.engagement_kind == resources_pb2.ENGAGEMENT_KIND_BOUNCED
    assert last.detail.startswith("5.1.1 permanent") and "priya" not in last.detail and "98765" not in last.detail
    # Marked as the outreach's failure in its trace, scrubbed as the timeline is.
    (span,) = [s for s in channels.spans.get_finished_spans() if s.name == "channels.engagement"]
    assert span.status.status_code == StatusCode.ERROR and span.status.description == f"bounced: {last.detail}"

    async def recorded() -> list[events_pb2.EngagementRecorded]:
        heard = listener.on(streams.ENGAGEMENT_RECORDED, campaign_id)
        return [events_pb2.EngagementRecorded.FromString(h.data) for h in heard]

    # The event carries the status as the timeline shows it: segments reads a permanent one as a hard bounce.
    (event,) = await eventually(recorded)
    assert (event.kind, event.detail) == (resources_pb2.ENGAGEMENT_KIND_BOUNCED, last.detail)
    # And when the message was queued (its address chosen): a bounce of an address replaced since suppresses nothing.
    queued = response.message.timeline[0]
    assert queued.delivery_state == resources_pb2.DELIVERY_STATE_QUEUED
    assert event.queue_time == queued.occur_time


async def test_engagement_arriving_together_each_gets_its_own_answer_in_its_own_trace(
    start_channels: StartChannels, smtp_relay: SmtpRelay, nats_bus: Bus, listener: Listener
) -> None:
    """Concurrent engagement shares transactions (group commit): each is applied in arrival order as it would be alone,
    a refused one fails alone, and a step timed before the message's last shows where a reload would show it."""
    channels, campaign_id = await _sent_message(start_channels, smtp_relay, nats_bus, listener)
    early = Timestamp()
    early.FromDatetime(datetime(2020, 1, 1, tzinfo=UTC))  # a provider's clock far behind ours

    def engagement(request_id: str, kind: int, **fields: object) -> service_pb2.RecordEngagementRequest:
        return service_pb2.RecordEngagementRequest(request_id=request_id, kind=kind, **fields)  # type: ignore[arg-type]

    opened, its_copy, reused, unknown, clicked_early = await asyncio.gather(
        channels.stub.RecordEngagement(engagement("e-open", OPENED, campaign_id=campaign_id)),
        channels.stub.RecordEngagement(engagement("e-open", OPENED, campaign_id=campaign_id)),
        channels.stub.RecordEngagement(engagement("e-open", CLICKED, campaign_id=campaign_id, url="https://x.in/")),
        channels.stub.RecordEngagement(engagement("e-unknown", OPENED, campaign_id="CSELL-NO-SUCH-MESSAGE")),
        channels.stub.RecordEngagement(
            engagement("e-click", CLICKED, campaign_id=campaign_id, url="https://bank.example.in/a", occur_time=early)
        ),
        return_exceptions=True,
    )
    # One request_id, two requests (calls may reach the server in another order than sent): whichever came first is
    # recorded and its copy gets its answer; the other is refused.
    same_id = (opened, its_copy, reused)
    recorded_ones = [r for r in same_id if isinstance(r, service_pb2.RecordEngagementResponse)]
    refused = [r for r in same_id if not isinstance(r, service_pb2.RecordEngagementResponse)]
    assert all(isinstance(r, grpc.aio.AioRpcError) and r.code() is grpc.StatusCode.ABORTED for r in refused)
    assert (len(recorded_ones), len(refused)) in ((2, 1), (1, 2))
    if len(recorded_ones) == 2:
        assert opened == its_copy
    assert isinstance(unknown, grpc.aio.AioRpcError) and unknown.code() is grpc.StatusCode.NOT_FOUND
    assert isinstance(clicked_early, service_pb2.RecordEngagementResponse)
    # Each answer is the message as it then stood, as GetMessage shows it: the early click first of the engagement,
    # by its time, which reads from the message's hand-over (a click cannot come before it).
    got = (await channels.stub.GetMessage(service_pb2.GetMessageRequest(campaign_id=campaign_id))).message
    last_answer = max([clicked_early, *recorded_ones], key=lambda r: len(r.message.timeline))
    assert last_answer.message == got
    kinds = [e.engagement_kind for e in got.timeline if e.WhichOneof("step") == "engagement_kind"]
    assert len(kinds) == 2 and kinds[0] == CLICKED
    (sent,) = [e for e in got.timeline if e.WhichOneof("step") == "delivery_state" and e.delivery_state == SENT]
    (early_click,) = [e for e in got.timeline if e.detail == "bank.example.in"]
    assert early_click.occur_time == sent.occur_time

    async def recorded() -> list[events_pb2.EngagementRecorded]:
        heard = listener.on(streams.ENGAGEMENT_RECORDED, campaign_id)
        return [events_pb2.EngagementRecorded.FromString(h.data) for h in heard] if len(heard) >= 2 else []

    events = await eventually(recorded)
    assert len(events) == 2
    for heard in listener.on(streams.ENGAGEMENT_RECORDED, campaign_id):
        assert heard.headers["traceparent"].split("-")[1] == f"{outreach_ids(campaign_id)[0]:032x}"
