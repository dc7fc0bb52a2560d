"""Engagement and conversions published by other services become events on the person's profile."""

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from plumbing import bounces
from plumbing.bus import Bus
from plumbing.ids import new_id
from plumbing.telemetry import outreach_ids
from services import streams
from tests.integration.segments.approval import publish
from tests.waiting import eventually
from xsell.attribution.v1 import events_pb2 as attribution_events
from xsell.channels.v1 import events_pb2 as channel_events
from xsell.channels.v1 import resources_pb2 as channel_resources
from xsell.segments.v1 import resources_pb2 as r
from xsell.segments.v1 import service_pb2 as api
from xsell.segments.v1.service_pb2_grpc import SegmentsServiceStub
from xsell.type.v1 import channel_pb2, money_pb2


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC) - timedelta(seconds=1))
    return stamp


def _at_now() -> Timestamp:
    """This moment: a resume after the stops the test has waited for."""
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    return stamp


def _performed(name: str) -> r.Rule:
    return r.Rule(
        event=r.EventCondition(
            event_name=name,
            performance=r.PERFORMANCE_PERFORMED,
            window=r.TimeWindow(last=Duration(seconds=30 * 24 * 3600)),
        )
    )


async def _segment(stub: SegmentsServiceStub, rule: r.Rule) -> str:
    created = await stub.CreateSegment(
        api.CreateSegmentRequest(request_id=new_id(), segment=r.Segment(display_name="activity", rule=rule))
    )
    await publish(stub, created.segment.segment_id)
    return created.segment.segment_id


async def test_click_and_conversion_land_on_the_profile_once_and_in_the_outreach_trace(
    segments: SegmentsServiceStub, nats_bus: Bus, spans: InMemorySpanExporter
) -> None:
    profile_id = f"p-{new_id()}"
    campaign_id = f"CSELL-NOV-T06-{new_id()[-6:]}"
    clicked_once = _performed("email_clicked")
    clicked_once.event.count.CopyFrom(r.CountComparison(operator=r.OPERATOR_EQUALS, value=1))
    clicked = await _segment(segments, clicked_once)
    opened = await _segment(segments, _performed("email_opened"))
    converted = await _segment(segments, _performed("converted"))

    click = channel_events.EngagementRecorded(
        event_id=new_id("evt_"),
        campaign_id=campaign_id,
        channel=channel_pb2.CHANNEL_EMAIL,
        kind=channel_resources.ENGAGEMENT_KIND_CLICKED,
        url="https://invest.example.com/",
        occur_time=_now(),
        profile_id=profile_id,
    )
    headers = {"Nats-Msg-Id": click.event_id, "Xsell-Campaign-Id": campaign_id}
    await nats_bus.js.publish(streams.ENGAGEMENT_RECORDED, click.SerializeToString(), headers=headers)
    # The same event again under another message id: the stored event id makes it change nothing.
    await nats_bus.js.publish(
        streams.ENGAGEMENT_RECORDED, click.SerializeToString(), headers={**headers, "Nats-Msg-Id": new_id()}
    )
    # A later, different engagement: once it is applied, the duplicate before it was handled too.
    opened_event = channel_events.EngagementRecorded()
    opened_event.CopyFrom(click)
    opened_event.event_id = new_id("evt_")
    opened_event.kind = channel_resources.ENGAGEMENT_KIND_OPENED
    await nats_bus.js.publish(
        streams.ENGAGEMENT_RECORDED,
        opened_event.SerializeToString(),
        headers={**headers, "Nats-Msg-Id": opened_event.event_id},
    )
    conversion = attribution_events.ConversionRecorded(
        event_id=new_id("evt_"),
        campaign_id=campaign_id,
        loan_number="LA-2025-0001",
        amount=money_pb2.Money(minor_units=174000000, currency_code="INR"),
        disburse_time=_now(),
        profile_id=profile_id,
        product_code="MSME_WC_TOPUP",
    )
    await nats_bus.js.publish(
        streams.CONVERSION_RECORDED,
        conversion.SerializeToString(),
        headers={"Nats-Msg-Id": conversion.event_id, "Xsell-Campaign-Id": campaign_id},
    )

    async def member_of(*segment_ids: str) -> bool:
        checks = [
            await segments.CheckMembership(api.CheckMembershipRequest(segment_id=s, profile_id=profile_id))
            for s in segment_ids
        ]
        return all(check.is_member for check in checks)

    await eventually(lambda: member_of(opened, converted))
    # Clicked exactly once, though the click was delivered twice.
    assert await member_of(clicked)
    trace_id, _ = outreach_ids(campaign_id)
    # The session's NATS also carries other tests' events; only this campaign ID's spans count.
    recorded = [
        s
        for s in spans.get_finished_spans()
        if s.name.startswith("segments.record") and (s.attributes or {}).get("campaign.id") == campaign_id
    ]
    assert {s.name for s in recorded} >= {"segments.record email_clicked", "segments.record converted"}
    assert all(s.context.trace_id == trace_id for s in recorded)
    profile = (await segments.GetProfile(api.GetProfileRequest(profile_id=profile_id))).profile
    assert profile.profile_id == profile_id


async def test_an_unsubscribe_or_complaint_suppresses_the_person_on_that_channel(
    segments: SegmentsServiceStub, nats_bus: Bus
) -> None:
    profile_id = f"p-{new_id()}"
    campaign_id = f"CSELL-NOV-T06-{new_id()[-6:]}"
    for kind, channel in (
        (channel_resources.ENGAGEMENT_KIND_UNSUBSCRIBED, channel_pb2.CHANNEL_EMAIL),
        (channel_resources.ENGAGEMENT_KIND_COMPLAINED, channel_pb2.CHANNEL_SMS),
        (channel_resources.ENGAGEMENT_KIND_OPENED, channel_pb2.CHANNEL_PUSH),
    ):
        await _engaged(nats_bus, profile_id, campaign_id, channel, kind)

    async def check(channel: int) -> api.CheckSuppressionResponse:
        return await segments.CheckSuppression(api.CheckSuppressionRequest(profile_id=profile_id, channel=channel))

    async def both_applied() -> bool:
        return (await check(channel_pb2.CHANNEL_EMAIL)).suppressed and (await check(channel_pb2.CHANNEL_SMS)).suppressed

    await eventually(both_applied)
    (email,) = (await check(channel_pb2.CHANNEL_EMAIL)).suppressions
    assert email.reason == r.SUPPRESSION_REASON_OPT_OUT
    assert campaign_id in email.note
    (sms,) = (await check(channel_pb2.CHANNEL_SMS)).suppressions
    assert sms.reason == r.SUPPRESSION_REASON_COMPLAINT
    # An open suppresses nothing, and an unsubscribe from e-mail does not stop WhatsApp or push.
    await eventually(lambda: member_events(segments, profile_id, "push_opened"))
    assert not (await check(channel_pb2.CHANNEL_PUSH)).suppressed
    assert not (await check(channel_pb2.CHANNEL_WHATSAPP)).suppressed


async def test_resuming_marketing_messages_in_whatsapp_lifts_only_the_opt_out_whatsapps_setting_made(
    segments: SegmentsServiceStub, nats_bus: Bus
) -> None:
    setting, typed = f"p-{new_id()}", f"p-{new_id()}"
    campaign_id = f"CSELL-NOV-T06-{new_id()[-6:]}"
    whatsapp = channel_pb2.CHANNEL_WHATSAPP
    stop, resume = channel_resources.ENGAGEMENT_KIND_UNSUBSCRIBED, channel_resources.ENGAGEMENT_KIND_RESUBSCRIBED

    async def opt_outs(profile_id: str) -> list[str]:
        answer = await segments.CheckSuppression(api.CheckSuppressionRequest(profile_id=profile_id, channel=whatsapp))
        return [s.note for s in answer.suppressions if s.reason == r.SUPPRESSION_REASON_OPT_OUT]

    # One stops in WhatsApp's settings; the other typed STOP first, then stopped in the settings too.
    await _engaged(nats_bus, setting, campaign_id, whatsapp, stop, detail=bounces.WHATSAPP_MARKETING_SETTING)
    await _engaged(nats_bus, typed, campaign_id, whatsapp, stop)
    await eventually(lambda: opt_outs(setting))
    await eventually(lambda: opt_outs(typed))
    later = f"CSELL-NOV-T06-{new_id()[-6:]}"
    await _engaged(nats_bus, typed, later, whatsapp, stop, detail=bounces.WHATSAPP_MARKETING_SETTING)

    async def setting_stop_applied() -> bool:
        on_later = r.PropertyFilter(property="campaign_id", operator=r.OPERATOR_EQUALS)
        on_later.values.add(string_value=later)
        condition = r.EventCondition(
            event_name="whatsapp_unsubscribed", performance=r.PERFORMANCE_PERFORMED, property_filters=[on_later]
        )
        preview = await segments.PreviewSegment(api.PreviewSegmentRequest(rule=r.Rule(event=condition), sample_size=10))
        return typed in preview.sample_profile_ids

    await eventually(setting_stop_applied)
    (setting_note,) = await opt_outs(setting)
    assert setting_note.startswith("stopped marketing messages in WhatsApp's settings")
    assert await opt_outs(typed) == [f"unsubscribed on campaign {campaign_id}"]  # the typed STOP's, kept

    # A resume that happened before the stop was recorded (one that overtook a later stop) lifts nothing, and nor
    # does a resubscribe that is not WhatsApp's setting.
    before_the_stop = _now()
    before_the_stop.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    setting_detail = bounces.WHATSAPP_MARKETING_SETTING
    await _engaged(nats_bus, setting, campaign_id, whatsapp, resume, detail=setting_detail, occur_time=before_the_stop)
    await _engaged(nats_bus, setting, campaign_id, whatsapp, resume, occur_time=_at_now())
    await eventually(lambda: member_events(segments, setting, "whatsapp_resubscribed"))

    async def both_resumes_applied() -> bool:
        preview = await segments.PreviewSegment(
            api.PreviewSegmentRequest(
                rule=r.Rule(
                    event=r.EventCondition(
                        event_name="whatsapp_resubscribed",
                        performance=r.PERFORMANCE_PERFORMED,
                        count=r.CountComparison(operator=r.OPERATOR_GREATER_OR_EQUAL, value=2),
                    )
                ),
                sample_size=100,
            )
        )
        return setting in preview.sample_profile_ids

    await eventually(both_resumes_applied)
    assert len(await opt_outs(setting)) == 1
    # The setting's resume now lifts only the setting's own opt-out.
    for profile_id in (setting, typed):
        await _engaged(nats_bus, profile_id, campaign_id, whatsapp, resume, detail=setting_detail, occur_time=_at_now())

    async def lifted() -> bool:
        return not await opt_outs(setting)

    await eventually(lifted)
    await eventually(lambda: member_events(segments, typed, "whatsapp_resubscribed"))
    assert await opt_outs(typed) == [f"unsubscribed on campaign {campaign_id}"]


async def test_whatsapps_setting_takes_the_persons_last_change_whatever_order_its_webhooks_come_in(
    segments: SegmentsServiceStub, nats_bus: Bus
) -> None:
    """Meta does not promise the order of its webhooks: a person who stopped, then resumed a minute later, whose
    resume is applied first, is left able to receive; one who stopped and resumed within the seconds before the stop
    was recorded is too; one who resumed, then stopped, is left stopped; a stop and a resume in the same second (Meta's
    timestamps are whole seconds) leave the person stopped, whichever arrives first."""
    late_stop, quick, stopped_last = f"p-{new_id()}", f"p-{new_id()}", f"p-{new_id()}"
    tie_resume_first, tie_stop_first = f"p-{new_id()}", f"p-{new_id()}"
    campaign_id = f"CSELL-NOV-T06-{new_id()[-6:]}"
    whatsapp, setting_detail = channel_pb2.CHANNEL_WHATSAPP, bounces.WHATSAPP_MARKETING_SETTING
    stop, resume = channel_resources.ENGAGEMENT_KIND_UNSUBSCRIBED, channel_resources.ENGAGEMENT_KIND_RESUBSCRIBED

    def ago(seconds: float) -> Timestamp:
        stamp = Timestamp()
        stamp.FromDatetime(datetime.now(UTC) - timedelta(seconds=seconds))
        return stamp

    async def opted_out(profile_id: str) -> bool:
        answer = await segments.CheckSuppression(api.CheckSuppressionRequest(profile_id=profile_id, channel=whatsapp))
        return any(s.reason == r.SUPPRESSION_REASON_OPT_OUT for s in answer.suppressions)

    async def applied(profile_id: str, name: str, count: int) -> bool:
        rule = r.Rule(
            event=r.EventCondition(
                event_name=name,
                performance=r.PERFORMANCE_PERFORMED,
                count=r.CountComparison(operator=r.OPERATOR_GREATER_OR_EQUAL, value=count),
            )
        )
        preview = await segments.PreviewSegment(api.PreviewSegmentRequest(rule=rule, sample_size=100))
        return profile_id in preview.sample_profile_ids

    # Resumed a minute after stopping; the resume arrives first.
    await _engaged(nats_bus, late_stop, campaign_id, whatsapp, resume, detail=setting_detail, occur_time=ago(0))
    await eventually(lambda: applied(late_stop, "whatsapp_resubscribed", 1))
    await _engaged(nats_bus, late_stop, campaign_id, whatsapp, stop, detail=setting_detail, occur_time=ago(60))
    await eventually(lambda: applied(late_stop, "whatsapp_unsubscribed", 1))
    assert not await opted_out(late_stop)

    # Stopped, then resumed a second later, before the stop was recorded; in order.
    stopped_at, resumed_at = ago(3), ago(2)
    await _engaged(nats_bus, quick, campaign_id, whatsapp, stop, detail=setting_detail, occur_time=stopped_at)
    await eventually(lambda: opted_out(quick))
    await _engaged(nats_bus, quick, campaign_id, whatsapp, resume, detail=setting_detail, occur_time=resumed_at)
    await eventually(lambda: applied(quick, "whatsapp_resubscribed", 1))
    assert not await opted_out(quick)

    # Resumed, then stopped; the stop arrives first: the older resume lifts nothing.
    await _engaged(nats_bus, stopped_last, campaign_id, whatsapp, stop, detail=setting_detail, occur_time=ago(0))
    await eventually(lambda: opted_out(stopped_last))
    await _engaged(nats_bus, stopped_last, campaign_id, whatsapp, resume, detail=setting_detail, occur_time=ago(60))
    await eventually(lambda: applied(stopped_last, "whatsapp_resubscribed", 1))
    assert await opted_out(stopped_last)

    # The same second: the resume arrives first, then the stop; then the other way round.
    same_second = ago(5)
    await _engaged(
        nats_bus, tie_resume_first, campaign_id, whatsapp, resume, detail=setting_detail, occur_time=same_second
    )
    await eventually(lambda: applied(tie_resume_first, "whatsapp_resubscribed", 1))
    await _engaged(
        nats_bus, tie_resume_first, campaign_id, whatsapp, stop, detail=setting_detail, occur_time=same_second
    )
    await eventually(lambda: applied(tie_resume_first, "whatsapp_unsubscribed", 1))
    assert await opted_out(tie_resume_first)
    await _engaged(nats_bus, tie_stop_first, campaign_id, whatsapp, stop, detail=setting_detail, occur_time=same_second)
    await eventually(lambda: opted_out(tie_stop_first))
    await _engaged(
        nats_bus, tie_stop_first, campaign_id, whatsapp, resume, detail=setting_detail, occur_time=same_second
    )
    await eventually(lambda: applied(tie_stop_first, "whatsapp_resubscribed", 1))
    assert await opted_out(tie_stop_first)


async def test_a_bare_no_suppresses_the_person_on_every_channel_for_the_decline_window(
    segments: SegmentsServiceStub, nats_bus: Bus
) -> None:
    profile_id = f"p-{new_id()}"
    campaign_id = f"CSELL-NOV-T06-{new_id()[-6:]}"
    said = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    said_at = Timestamp()
    said_at.FromDatetime(said)
    declined = channel_resources.ENGAGEMENT_KIND_DECLINED
    await _engaged(
        nats_bus, profile_id, campaign_id, channel_pb2.CHANNEL_WHATSAPP, declined, reply_text="No", occur_time=said_at
    )

    async def check(channel: int) -> api.CheckSuppressionResponse:
        return await segments.CheckSuppression(api.CheckSuppressionRequest(profile_id=profile_id, channel=channel))

    await eventually(lambda: member_events(segments, profile_id, "whatsapp_declined"))
    # The offer was refused, whichever channel asked: e-mail is suppressed too, for the window from when they said it.
    for channel in (channel_pb2.CHANNEL_WHATSAPP, channel_pb2.CHANNEL_EMAIL):
        (decline,) = (await check(channel)).suppressions
        assert decline.reason == r.SUPPRESSION_REASON_RECENT_DECLINE
        assert decline.channel == channel_pb2.CHANNEL_UNSPECIFIED
        assert decline.expire_time.ToDatetime(tzinfo=UTC) == said + timedelta(days=90)
        assert f"declined on campaign {campaign_id}" == decline.note


async def test_a_permanent_bounce_suppresses_e_mail_until_the_address_changes(
    segments: SegmentsServiceStub, nats_bus: Bus
) -> None:
    profile_id = f"p-{new_id()}"
    campaign_id = f"CSELL-NOV-T06-{new_id()[-6:]}"
    await segments.UpsertProfiles(
        api.UpsertProfilesRequest(
            request_id=new_id("req_"),
            profiles=[r.Profile(profile_id=profile_id, attributes={"email": r.Value(string_value="old@x.in")})],
        )
    )
    # A full mailbox given up, or a spam block, says nothing against the address; 5.1.1 (no such mailbox) does.
    for detail in ("4.2.2 transient, given up", "5.7.1 permanent", "5.1.1 permanent"):
        bounced = channel_resources.ENGAGEMENT_KIND_BOUNCED
        await _engaged(nats_bus, profile_id, campaign_id, channel_pb2.CHANNEL_EMAIL, bounced, detail=detail)

    async def on_email() -> list[r.Suppression]:
        check = api.CheckSuppressionRequest(profile_id=profile_id, channel=channel_pb2.CHANNEL_EMAIL)
        return list((await segments.CheckSuppression(check)).suppressions)

    (hard,) = await eventually(on_email)
    assert (hard.reason, hard.channel, hard.note) == (
        r.SUPPRESSION_REASON_HARD_BOUNCE,
        channel_pb2.CHANNEL_EMAIL,
        f"bounced 5.1.1 on campaign {campaign_id}",
    )
    assert not hard.HasField("expire_time")
    sms = api.CheckSuppressionRequest(profile_id=profile_id, channel=channel_pb2.CHANNEL_SMS)
    assert not (await segments.CheckSuppression(sms)).suppressed

    async def upsert_email(address: str) -> None:
        await segments.UpsertProfiles(
            api.UpsertProfilesRequest(
                request_id=new_id("req_"),
                profiles=[r.Profile(profile_id=profile_id, attributes={"email": r.Value(string_value=address)})],
            )
        )

    # The CRM's daily feed of the same address lifts nothing; a new address lifts it.
    await upsert_email("old@x.in")
    assert [s.reason for s in await on_email()] == [r.SUPPRESSION_REASON_HARD_BOUNCE]
    await upsert_email("new@x.in")
    assert await on_email() == []


async def test_a_bounce_of_an_address_replaced_since_the_message_was_queued_suppresses_nothing(
    segments: SegmentsServiceStub, nats_bus: Bus
) -> None:
    profile_id = f"p-{new_id()}"
    bounced = channel_resources.ENGAGEMENT_KIND_BOUNCED

    async def upsert_email(address: str) -> None:
        await segments.UpsertProfiles(
            api.UpsertProfilesRequest(
                request_id=new_id("req_"),
                profiles=[r.Profile(profile_id=profile_id, attributes={"email": r.Value(string_value=address)})],
            )
        )

    async def bounce(queued: datetime, campaign_id: str) -> None:
        queue_time = Timestamp()
        queue_time.FromDatetime(queued)
        await _engaged(
            nats_bus,
            profile_id,
            campaign_id,
            channel_pb2.CHANNEL_EMAIL,
            bounced,
            detail="5.1.1 permanent",
            queue_time=queue_time,
        )

    async def on_email() -> list[r.Suppression]:
        check = api.CheckSuppressionRequest(profile_id=profile_id, channel=channel_pb2.CHANNEL_EMAIL)
        return list((await segments.CheckSuppression(check)).suppressions)

    await upsert_email("old@x.in")  # the first address: nothing replaced
    # A message queued to old@x.in bounces two days later, after the CRM gave new@x.in: the new one is not known bad.
    queued_to_old = datetime.now(UTC) - timedelta(seconds=1)
    await upsert_email("new@x.in")
    stale = f"CSELL-NOV-T06-{new_id()[-6:]}"
    await bounce(queued_to_old, stale)
    # The bounce is on the profile, as every bounce is (the first email_bounced of this person), and suppresses nothing.
    await eventually(lambda: member_events(segments, profile_id, "email_bounced"))
    assert await on_email() == []
    # A message queued after the change, to new@x.in, that bounces does suppress it.
    fresh = f"CSELL-NOV-T06-{new_id()[-6:]}"
    await bounce(datetime.now(UTC) + timedelta(seconds=1), fresh)
    (hard,) = await eventually(on_email)
    assert hard.reason == r.SUPPRESSION_REASON_HARD_BOUNCE


async def test_a_push_token_fcm_no_longer_knows_suppresses_push_until_the_app_registers_anew(
    segments: SegmentsServiceStub, nats_bus: Bus
) -> None:
    profile_id = f"p-{new_id()}"
    campaign_id = f"CSELL-NOV-T06-{new_id()[-6:]}"
    token = r.Value(string_value="fcm-token-old")
    await segments.DefineAttributes(
        api.DefineAttributesRequest(
            request_id=new_id("req_"),
            attributes=[r.AttributeDefinition(name="push_token", type=r.ATTRIBUTE_TYPE_STRING, pii=True)],
        )
    )
    await segments.UpsertProfiles(
        api.UpsertProfilesRequest(
            request_id=new_id("req_"), profiles=[r.Profile(profile_id=profile_id, attributes={"push_token": token})]
        )
    )
    bounced = channel_resources.ENGAGEMENT_KIND_BOUNCED
    await _engaged(
        nats_bus, profile_id, campaign_id, channel_pb2.CHANNEL_PUSH, bounced, detail="UNREGISTERED permanent"
    )
    check = api.CheckSuppressionRequest(profile_id=profile_id, channel=channel_pb2.CHANNEL_PUSH)

    async def on_push() -> list[r.Suppression]:
        return list((await segments.CheckSuppression(check)).suppressions)

    (gone,) = await eventually(on_push)
    assert (gone.reason, gone.note) == (
        r.SUPPRESSION_REASON_HARD_BOUNCE,
        f"bounced UNREGISTERED on campaign {campaign_id}",
    )
    # The app registers anew: its new token lifts it.
    await segments.UpsertProfiles(
        api.UpsertProfilesRequest(
            request_id=new_id("req_"),
            profiles=[
                r.Profile(profile_id=profile_id, attributes={"push_token": r.Value(string_value="fcm-token-new")})
            ],
        )
    )
    assert await on_push() == []


@pytest.mark.parametrize(
    ("channel", "detail", "reason"),
    [
        # Exotel's failed-dnd: the number is on the Do-Not-Disturb registry.
        (channel_pb2.CHANNEL_SMS, "DND failed-dnd", r.SUPPRESSION_REASON_DND_REGISTRY),
        # WhatsApp's 131026: the number is not on WhatsApp (or its app is too old). Campaigns' fallback reaches them.
        (channel_pb2.CHANNEL_WHATSAPP, "UNREACHABLE whatsapp 131026", r.SUPPRESSION_REASON_UNREACHABLE),
    ],
    ids=["dnd-registry", "not-on-whatsapp"],
)
async def test_a_number_refused_for_a_while_is_suppressed_on_that_channel_for_a_while_or_until_it_changes(
    segments: SegmentsServiceStub, nats_bus: Bus, channel: int, detail: str, reason: int
) -> None:
    profile_id = f"p-{new_id()}"
    campaign_id = f"CSELL-NOV-T06-{new_id()[-6:]}"

    async def phone(number: str) -> None:
        await segments.UpsertProfiles(
            api.UpsertProfilesRequest(
                request_id=new_id("req_"),
                profiles=[r.Profile(profile_id=profile_id, attributes={"phone": r.Value(string_value=number)})],
            )
        )

    await phone("+919876543210")
    refused = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    refused_at = Timestamp()
    refused_at.FromDatetime(refused)
    bounced = channel_resources.ENGAGEMENT_KIND_BOUNCED
    await _engaged(
        nats_bus,
        profile_id,
        campaign_id,
        channel,
        bounced,
        detail=detail,
        occur_time=refused_at,
    )
    check = api.CheckSuppressionRequest(profile_id=profile_id, channel=channel)  # type: ignore[arg-type]

    async def on_channel() -> list[r.Suppression]:
        return list((await segments.CheckSuppression(check)).suppressions)

    (refusal,) = await eventually(on_channel)
    assert (refusal.reason, refusal.channel) == (reason, channel)
    assert refusal.expire_time.ToDatetime(tzinfo=UTC) == refused + timedelta(days=30)  # then tried again
    for other in (channel_pb2.CHANNEL_EMAIL, channel_pb2.CHANNEL_SMS, channel_pb2.CHANNEL_WHATSAPP):
        if other != channel:
            elsewhere = api.CheckSuppressionRequest(profile_id=profile_id, channel=other)
            assert not (await segments.CheckSuppression(elsewhere)).suppressed
    await phone("+919876543210")  # the CRM's feed of the same number lifts nothing
    assert len(await on_channel()) == 1
    await phone("+919812345678")  # a new number: not on the registry, maybe on WhatsApp, as far as anyone knows
    assert await on_channel() == []


async def _engaged(nats_bus: Bus, profile_id: str, campaign_id: str, channel: int, kind: int, **fields: object) -> None:
    """Publishes channels' EngagementRecorded for the person, as channels' outbox relay does."""
    engagement = channel_events.EngagementRecorded(
        event_id=new_id("evt_"),
        campaign_id=campaign_id,
        channel=channel,  # type: ignore[arg-type]
        kind=kind,  # type: ignore[arg-type]
        profile_id=profile_id,
        **fields,  # type: ignore[arg-type]
    )
    if not engagement.HasField("occur_time"):
        engagement.occur_time.CopyFrom(_now())
    await nats_bus.js.publish(
        streams.ENGAGEMENT_RECORDED,
        engagement.SerializeToString(),
        headers={"Nats-Msg-Id": engagement.event_id, "Xsell-Campaign-Id": campaign_id},
    )


async def member_events(segments: SegmentsServiceStub, profile_id: str, name: str) -> bool:
    """True once the profile exists with an event of this name recorded (the engagement was applied)."""
    try:
        await segments.GetProfile(api.GetProfileRequest(profile_id=profile_id))
    except grpc.aio.AioRpcError:
        return False
    explained = await segments.PreviewSegment(
        api.PreviewSegmentRequest(
            rule=r.Rule(event=r.EventCondition(event_name=name, performance=r.PERFORMANCE_PERFORMED)), sample_size=100
        )
    )
    return profile_id in explained.sample_profile_ids
