"""The attribution service end to end on its real parts: NATS, SQLite and PostgreSQL, the gRPC server."""

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from plumbing.bus import Bus
from plumbing.db import Database
from plumbing.ids import new_id
from plumbing.page_tokens import encode_token
from plumbing.runtime import ServiceProcess
from plumbing.telemetry import outreach_trace_id
from services import streams
from services.attribution.lead_watch import LeadWatch
from tests.integration.attribution.seeding import publish_outreach, publish_withdrawal, running_service
from tests.status_details import precondition_violations
from tests.waiting import eventually
from xsell.attribution.v1 import events_pb2 as attribution_events
from xsell.attribution.v1 import resources_pb2 as attribution_pb2
from xsell.attribution.v1 import service_pb2, service_pb2_grpc
from xsell.campaigns.v1 import events_pb2 as campaign_events
from xsell.campaigns.v1 import resources_pb2 as campaigns_pb2
from xsell.channels.v1 import events_pb2 as channel_events
from xsell.channels.v1 import resources_pb2 as channels_pb2
from xsell.type.v1 import channel_pb2, money_pb2

OUTREACH_CREATED_AT = datetime(2025, 11, 13, 3, 45, tzinfo=UTC)  # 09:15 in Kolkata


@dataclass
class Service:
    process: ServiceProcess
    stub: service_pb2_grpc.AttributionServiceStub
    bus: Bus
    spans: InMemorySpanExporter

    def outreach_spans(self, name: str, campaign_id: str) -> list[ReadableSpan]:
        """Finished spans called `name` that sit in the campaign ID's trace."""
        trace_id = int(outreach_trace_id(campaign_id), 16)
        return [
            span
            for span in self.spans.get_finished_spans()
            if span.name == name
            and span.context is not None
            and span.context.trace_id == trace_id
            and (span.attributes or {}).get("campaign.id") == campaign_id
        ]


@pytest.fixture
async def service(database_url: str, nats_url: str, nats_bus: Bus, tmp_path: Path) -> AsyncIterator[Service]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    async with running_service(database_url, nats_url, nats_bus, tmp_path, provider) as started:
        yield Service(started.process, started.stub, nats_bus, spans)


def _ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _inr(minor_units: int) -> money_pb2.Money:
    return money_pb2.Money(minor_units=minor_units, currency_code="INR")


def _new_campaign_id() -> str:
    return f"CSELL-NOV-T06-{new_id()}"


async def _publish_outreach(bus: Bus, campaign_id: str, *, message_id: str | None = None) -> None:
    event = campaign_events.OutreachCreated(
        event_id=new_id("evt_"),
        outreach=campaigns_pb2.Outreach(
            campaign_id=campaign_id,
            campaign_key="cmp_msme_gst",
            profile_id="prf_kaveri",
            channel=channel_pb2.CHANNEL_EMAIL,
            trigger_code="T06",
            offer=campaigns_pb2.Offer(product_code="MSME_WC_TOPUP", amount=_inr(174_000_000)),
            labels=["Cross-Sell – MSME"],
            category=campaigns_pb2.CAMPAIGN_CATEGORY_UPSELL_INCREASE_VALUE,
            create_time=_ts(OUTREACH_CREATED_AT),
        ),
    )
    await bus.js.publish(
        streams.OUTREACH_CREATED,
        event.SerializeToString(),
        headers={"Nats-Msg-Id": message_id or event.event_id, "Xsell-Campaign-Id": campaign_id},
    )


async def _publish_engagement(bus: Bus, campaign_id: str, kind: int) -> None:
    event = channel_events.EngagementRecorded(
        event_id=new_id("evt_"),
        campaign_id=campaign_id,
        channel=channel_pb2.CHANNEL_EMAIL,
        kind=kind,  # type: ignore[arg-type]
        occur_time=_ts(datetime(2025, 11, 14, 5, 0, tzinfo=UTC)),
    )
    await bus.js.publish(
        streams.ENGAGEMENT_RECORDED,
        event.SerializeToString(),
        headers={"Nats-Msg-Id": event.event_id, "Xsell-Campaign-Id": campaign_id},
    )


async def _publish_delivery(bus: Bus, campaign_id: str, state: int) -> None:
    event = channel_events.DeliveryUpdated(
        event_id=new_id("evt_"),
        campaign_id=campaign_id,
        channel=channel_pb2.CHANNEL_EMAIL,
        state=state,  # type: ignore[arg-type]
        occur_time=_ts(datetime(2025, 11, 13, 3, 46, tzinfo=UTC)),
    )
    await bus.js.publish(
        streams.DELIVERY_UPDATED,
        event.SerializeToString(),
        headers={"Nats-Msg-Id": event.event_id, "Xsell-Campaign-Id": campaign_id},
    )


async def _attribution(
    stub: service_pb2_grpc.AttributionServiceStub, campaign_id: str
) -> attribution_pb2.CampaignAttribution:
    response = await stub.GetCampaignAttribution(service_pb2.GetCampaignAttributionRequest(campaign_id=campaign_id))
    return response.attribution


async def _known(
    stub: service_pb2_grpc.AttributionServiceStub, campaign_id: str
) -> attribution_pb2.CampaignAttribution | None:
    try:
        return await _attribution(stub, campaign_id)
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None


async def _wait_known(
    stub: service_pb2_grpc.AttributionServiceStub, campaign_id: str
) -> attribution_pb2.CampaignAttribution:
    """Waits until the outreach's OutreachCreated has been applied."""
    found = await eventually(lambda: _known(stub, campaign_id))
    assert found is not None
    return found


async def _sent(
    stub: service_pb2_grpc.AttributionServiceStub, campaign_id: str
) -> attribution_pb2.CampaignAttribution | None:
    """The outreach's attribution once a SENT has been applied to it."""
    found = await _attribution(stub, campaign_id)
    return found if found.funnel.sent else None


async def _rejected(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value


async def test_outreach_to_disbursement_is_priced_to_the_rupee_and_published(service: Service) -> None:
    stub, bus = service.stub, service.bus
    campaign_id = _new_campaign_id()
    conversions: list[attribution_events.ConversionRecorded] = []

    async def collect(msg: object) -> None:
        conversions.append(attribution_events.ConversionRecorded.FromString(msg.data))  # type: ignore[attr-defined]

    subscription = await bus.nc.subscribe(streams.CONVERSION_RECORDED, cb=collect)

    await _publish_outreach(bus, campaign_id)
    recorded = await _wait_known(stub, campaign_id)
    assert recorded.trigger_code == "T06"
    assert recorded.channel == channel_pb2.CHANNEL_EMAIL
    assert recorded.cost.minor_units == 0  # nothing is sent yet: no send cost
    await _publish_delivery(bus, campaign_id, channels_pb2.DELIVERY_STATE_SENT)
    recorded = await eventually(lambda: _sent(stub, campaign_id))
    assert recorded.cost.minor_units == 50  # the e-mail send cost, booked when the provider took it

    lead = await stub.CreateLead(
        service_pb2.CreateLeadRequest(request_id=new_id(), campaign_id=campaign_id, crm_lead_id="CRM-77")
    )
    assert lead.lead.origin == attribution_pb2.LEAD_ORIGIN_CRM
    await stub.RecordApplication(
        service_pb2.RecordApplicationRequest(
            request_id=new_id(),
            loan_number="LA-2025-0001",
            campaign_id=campaign_id,
            apply_time=_ts(datetime(2025, 11, 15, 6, 0, tzinfo=UTC)),
        )
    )

    def disburse(
        amount: money_pb2.Money, *, campaign: str = campaign_id, request_id: str = "", disbursement_id: str = "DISB-1"
    ) -> Awaitable[service_pb2.RecordDisbursementResponse]:
        return stub.RecordDisbursement(  # type: ignore[no-any-return]
            service_pb2.RecordDisbursementRequest(
                request_id=request_id or new_id(),
                disbursement_id=disbursement_id,
                loan_number="LA-2025-0001",
                campaign_id=campaign,
                amount=amount,
                disburse_time=_ts(datetime(2025, 11, 22, 6, 0, tzinfo=UTC)),
            )
        )

    before_sanction = await _attribution(stub, campaign_id)
    error = await _rejected(disburse(_inr(174_000_000)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "applied" in (error.details() or "")
    # The loan is the precondition's subject: the step it still needs is before this one.
    assert precondition_violations(error) == [("ORDER", "loans/LA-2025-0001", error.details())]
    assert await _attribution(stub, campaign_id) == before_sanction

    sanction = await stub.RecordSanction(
        service_pb2.RecordSanctionRequest(
            request_id=new_id(),
            loan_number="LA-2025-0001",
            campaign_id=campaign_id,
            amount=_inr(174_000_000),
            sanction_time=_ts(datetime(2025, 11, 18, 6, 0, tzinfo=UTC)),
        )
    )
    assert sanction.loan.stage == attribution_pb2.LOAN_STAGE_SANCTIONED
    assert sanction.loan.product_code == "MSME_WC_TOPUP"

    before = await _attribution(stub, campaign_id)
    error = await _rejected(disburse(_inr(-174_000_000)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "amount.minor_units" in (error.details() or "")
    error = await _rejected(disburse(_inr(174_000_000), campaign="CSELL-NOV-T06-NOPE"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "CSELL-NOV-T06-NOPE" in (error.details() or "")
    assert await _attribution(stub, campaign_id) == before

    request_id = new_id()
    disbursed = await disburse(_inr(174_000_000), request_id=request_id)
    attribution = disbursed.attribution
    assert attribution.disbursed_amount == _inr(174_000_000)
    assert attribution.lifetime_revenue == _inr(45_240_000)  # ₹4,52,400
    assert attribution.year1_revenue == _inr(4_524_000)  # ₹45,240
    assert attribution.cost == _inr(9_800)  # ₹0.50 send + 15 min × ₹6.50 RM time
    assert attribution.romi == pytest.approx(4616.33, abs=0.01)
    assert await _attribution(stub, campaign_id) == attribution
    assert [loan.stage for loan in attribution.loans] == [attribution_pb2.LOAN_STAGE_DISBURSED]
    assert [lead.crm_lead_id for lead in attribution.leads] == ["CRM-77"]
    funnel = attribution.funnel
    assert (funnel.responded, funnel.applied, funnel.sanctioned, funnel.disbursed) == (1, 1, 1, 1)

    # A retried request gets the first answer and changes nothing; a reused disbursement id is refused.
    assert await disburse(_inr(174_000_000), request_id=request_id) == disbursed
    error = await _rejected(disburse(_inr(174_000_000)))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await _attribution(stub, campaign_id) == attribution

    async def conversion_published() -> list[attribution_events.ConversionRecorded]:
        return [c for c in conversions if c.campaign_id == campaign_id]

    # Every step joined the outreach's trace, however many days after the outreach it came.
    for name in (
        "attribution.record_outreach",
        "attribution.create_lead",
        "attribution.record_application",
        "attribution.record_sanction",
        "attribution.record_disbursement",
    ):
        assert service.outreach_spans(name, campaign_id), name

    published = await eventually(conversion_published)
    await subscription.unsubscribe()
    assert len(published) == 1
    assert published[0].loan_number == "LA-2025-0001"
    assert published[0].amount == _inr(174_000_000)
    assert published[0].lifetime_revenue == _inr(45_240_000)
    assert published[0].year1_revenue == _inr(4_524_000)


async def test_click_marks_the_funnel_and_a_reply_is_a_lead_even_before_the_outreach_arrives(service: Service) -> None:
    stub, bus = service.stub, service.bus
    early = _new_campaign_id()
    # The engagement overtakes its outreach: the consumer naks it and applies it on redelivery.
    await _publish_engagement(bus, early, channels_pb2.ENGAGEMENT_KIND_REPLIED)
    await _publish_outreach(bus, early)

    async def responded() -> attribution_pb2.CampaignAttribution | None:
        found = await _known(stub, early)
        return found if found is not None and found.funnel.responded else None

    replied = await eventually(responded)
    assert replied is not None
    assert [lead.origin for lead in replied.leads] == [attribution_pb2.LEAD_ORIGIN_REPLY]
    # The RM's time alone: no SENT came from channels here, so no send cost is booked.
    assert replied.cost == _inr(15 * 650)

    clicked_id = _new_campaign_id()
    await _publish_outreach(bus, clicked_id)
    await _wait_known(stub, clicked_id)
    await _publish_engagement(bus, clicked_id, channels_pb2.ENGAGEMENT_KIND_CLICKED)

    async def clicked() -> attribution_pb2.CampaignAttribution | None:
        found = await _attribution(stub, clicked_id)
        return found if found.funnel.clicked else None

    found = await eventually(clicked)
    assert found is not None
    funnel = found.funnel
    assert (funnel.sent, funnel.delivered, funnel.opened, funnel.clicked) == (1, 1, 1, 1)
    assert (funnel.responded, funnel.applied, funnel.disbursed) == (0, 0, 0)
    assert service.outreach_spans("attribution.record_engagement", clicked_id)


async def _awaiting(stub: service_pb2_grpc.AttributionServiceStub, page_size: int = 0) -> list[service_pb2.ListedLead]:
    """Every lead awaiting the CRM's id, walked page by page as a CRM would poll."""
    listed: list[service_pb2.ListedLead] = []
    token = ""
    while True:
        page = await stub.ListLeads(
            service_pb2.ListLeadsRequest(awaiting_crm_lead_id=True, page_size=page_size, page_token=token)
        )
        listed.extend(page.leads)
        token = page.next_page_token
        if not token:
            return listed


async def test_the_crm_pulls_the_leads_replies_made_and_records_each_as_the_same_lead_with_rm_time_booked_once(
    service: Service, database_url: str
) -> None:
    stub, bus = service.stub, service.bus
    replied, second, crm_first = _new_campaign_id(), _new_campaign_id(), _new_campaign_id()
    for campaign_id in (replied, second, crm_first):
        await _publish_outreach(bus, campaign_id)
        await _wait_known(stub, campaign_id)
    # The CRM made crm_first's lead (an RM saw the reply in the WhatsApp inbox) before its reply reached xsell.
    made = await stub.CreateLead(
        service_pb2.CreateLeadRequest(request_id=new_id(), campaign_id=crm_first, crm_lead_id=f"CRM-{crm_first}")
    )
    for campaign_id in (replied, second, crm_first):
        await _publish_engagement(bus, campaign_id, channels_pb2.ENGAGEMENT_KIND_REPLIED)

    async def responded(campaign_id: str) -> attribution_pb2.CampaignAttribution | None:
        found = await _attribution(stub, campaign_id)
        return found if found.funnel.responded else None

    for campaign_id in (replied, second):
        await eventually(lambda campaign_id=campaign_id: responded(campaign_id))  # type: ignore[misc]
    # Page by page, oldest first, each with whom and what it is about; the CRM's own lead is not awaiting anything.
    ours = [
        item for item in await _awaiting(stub, page_size=1) if item.lead.campaign_id in (replied, second, crm_first)
    ]
    assert [(item.lead.campaign_id, item.lead.origin, item.lead.crm_lead_id) for item in ours] == [
        (replied, attribution_pb2.LEAD_ORIGIN_REPLY, ""),
        (second, attribution_pb2.LEAD_ORIGIN_REPLY, ""),
    ]
    assert (ours[0].profile_id, ours[0].product_code, ours[0].campaign_key) == (
        "prf_kaveri",
        "MSME_WC_TOPUP",
        "cmp_msme_gst",
    )

    # A page token goes on with the request it came from.
    first = await stub.ListLeads(service_pb2.ListLeadsRequest(awaiting_crm_lead_id=True, page_size=1))
    with pytest.raises(grpc.aio.AioRpcError) as mixed:
        await stub.ListLeads(service_pb2.ListLeadsRequest(page_token=first.next_page_token))
    assert mixed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (mixed.value.details() or "").startswith("page_token:")

    # What the SRE's gauges read meanwhile: two leads wait for the CRM, the oldest since its reply.
    watch = LeadWatch(Database(database_url))
    waiting, oldest_age = await watch.measure()
    replied_at = datetime(2025, 11, 14, 5, 0, tzinfo=UTC)  # _publish_engagement's occur_time
    assert waiting == 2 and abs(oldest_age - (datetime.now(UTC) - replied_at).total_seconds()) < 600

    # The CRM records the reply's lead under its own id: the same lead, and the RM's time is not booked again.
    claimed = await stub.CreateLead(
        service_pb2.CreateLeadRequest(request_id=new_id(), campaign_id=replied, crm_lead_id="CRM-R1")
    )
    assert (claimed.lead.lead_id, claimed.lead.crm_lead_id) == (ours[0].lead.lead_id, "CRM-R1")
    again = await stub.CreateLead(
        service_pb2.CreateLeadRequest(request_id=new_id(), campaign_id=replied, crm_lead_id="CRM-R1")
    )
    assert again.lead == claimed.lead
    with pytest.raises(grpc.aio.AioRpcError) as elsewhere:
        await stub.CreateLead(
            service_pb2.CreateLeadRequest(request_id=new_id(), campaign_id=second, crm_lead_id="CRM-R1")
        )
    assert elsewhere.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert [item.lead.campaign_id for item in await _awaiting(stub) if item.lead.campaign_id in (replied, second)] == [
        second
    ]
    assert (await watch.measure())[0] == 1
    await watch.db.dispose()
    for campaign_id in (replied, crm_first):
        attribution = await _attribution(stub, campaign_id)
        assert len(attribution.leads) == 1, campaign_id
        assert attribution.cost == _inr(15 * 650), campaign_id  # one RM call (no SENT here: no send cost)
    assert (await _attribution(stub, crm_first)).leads[0].lead_id == made.lead.lead_id


async def test_a_support_agent_finds_a_callers_outreaches_newest_first_and_tags_the_call_to_one(
    service: Service,
) -> None:
    stub, bus = service.stub, service.bus
    profile_id = new_id("prf_")
    day = datetime(2025, 11, 10, 4, 0, tzinfo=UTC)
    # Four outreaches over three days (two at the same moment), and one withdrawn before it was sent.
    sent = {f"CSELL-NOV-T06-{profile_id[-6:]}{n}": day.replace(day=10 + min(n, 2)) for n in range(4)}
    withdrawn = f"CSELL-NOV-T07-{profile_id[-6:]}"
    for campaign_id, at in [*sent.items(), (withdrawn, day)]:
        await publish_outreach(bus, campaign_id, profile_id=profile_id, at=at)
    for campaign_id in [*sent, withdrawn]:
        await _wait_known(stub, campaign_id)
    await publish_withdrawal(bus, withdrawn, profile_id=profile_id, at=day)

    async def withdrawn_applied() -> bool:
        return await _known(stub, withdrawn) is None

    await eventually(withdrawn_applied)
    listed: list[str] = []
    token = ""
    while True:
        # One a page: the two made at the same moment meet at a page boundary, split by their campaign IDs.
        page = await stub.ListProfileOutreaches(
            service_pb2.ListProfileOutreachesRequest(profile_id=profile_id, page_size=1, page_token=token)
        )
        listed.extend(o.campaign_id for o in page.outreaches)
        token = page.next_page_token
        if not token:
            break
    newest_first = sorted(sent, key=lambda campaign_id: (sent[campaign_id], campaign_id), reverse=True)
    assert listed == newest_first

    # The caller rang about the newest offer: the agent tags the inquiry to it, and its record shows the lead.
    tagged = await stub.CreateLead(
        service_pb2.CreateLeadRequest(
            request_id=new_id(), campaign_id=listed[0], origin=attribution_pb2.LEAD_ORIGIN_SUPPORT_AGENT
        )
    )
    first = await stub.ListProfileOutreaches(service_pb2.ListProfileOutreachesRequest(profile_id=profile_id))
    assert first.outreaches[0].leads == [tagged.lead]
    # The CRM then records its own lead for the call: the agent's lead gets its id, one lead, one RM call.
    recorded = await stub.CreateLead(
        service_pb2.CreateLeadRequest(request_id=new_id(), campaign_id=listed[0], crm_lead_id=f"CRM-{profile_id}")
    )
    assert (recorded.lead.lead_id, recorded.lead.origin) == (tagged.lead.lead_id, tagged.lead.origin)
    first = await stub.ListProfileOutreaches(service_pb2.ListProfileOutreachesRequest(profile_id=profile_id))
    assert [lead.crm_lead_id for lead in first.outreaches[0].leads] == [f"CRM-{profile_id}"]
    assert first.outreaches[0].funnel.responded == 1 and first.outreaches[1].funnel.responded == 0
    assert await stub.ListProfileOutreaches(service_pb2.ListProfileOutreachesRequest(profile_id="prf_nobody")) == (
        service_pb2.ListProfileOutreachesResponse()
    )
    one = await stub.ListProfileOutreaches(service_pb2.ListProfileOutreachesRequest(profile_id=profile_id, page_size=1))
    assert one.next_page_token
    naive = encode_token(
        "ListProfileOutreaches", {"profile_id": profile_id, "before": "2025-11-10T04:00:00 CSELL-NOV-T06-X"}
    )
    for bad in (
        service_pb2.ListProfileOutreachesRequest(),
        service_pb2.ListProfileOutreachesRequest(profile_id=profile_id, page_token="junk"),
        service_pb2.ListProfileOutreachesRequest(profile_id="prf_other", page_token=one.next_page_token),
        service_pb2.ListProfileOutreachesRequest(profile_id=profile_id, page_token=naive),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListProfileOutreaches(bad)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_bare_no_is_a_response_and_no_lead(service: Service) -> None:
    stub, bus = service.stub, service.bus
    campaign_id = _new_campaign_id()
    await _publish_outreach(bus, campaign_id)
    await _wait_known(stub, campaign_id)
    await _publish_engagement(bus, campaign_id, channels_pb2.ENGAGEMENT_KIND_DECLINED)

    async def responded() -> attribution_pb2.CampaignAttribution | None:
        found = await _attribution(stub, campaign_id)
        return found if found.funnel.responded else None

    declined = await eventually(responded)
    assert declined is not None
    # No RM calls someone who said no: no lead, and so no RM's cost on the outreach (and no SENT: no send cost).
    assert list(declined.leads) == []
    assert declined.cost == _inr(0)


async def test_delivery_updates_mark_sent_and_delivered(service: Service) -> None:
    stub, bus = service.stub, service.bus
    campaign_id = _new_campaign_id()
    await _publish_outreach(bus, campaign_id)
    await _wait_known(stub, campaign_id)
    await _publish_delivery(bus, campaign_id, channels_pb2.DELIVERY_STATE_FAILED)
    await _publish_delivery(bus, campaign_id, channels_pb2.DELIVERY_STATE_SENT)

    async def sent() -> attribution_pb2.Funnel | None:
        funnel = (await _attribution(stub, campaign_id)).funnel
        return funnel if funnel.sent else None

    funnel = await eventually(sent)
    assert funnel is not None
    assert (funnel.sent, funnel.delivered, funnel.opened) == (1, 0, 0)
    await _publish_delivery(bus, campaign_id, channels_pb2.DELIVERY_STATE_DELIVERED)

    async def delivered() -> attribution_pb2.Funnel | None:
        funnel = (await _attribution(stub, campaign_id)).funnel
        return funnel if funnel.delivered else None

    funnel = await eventually(delivered)
    assert funnel is not None
    assert (funnel.sent, funnel.delivered, funnel.opened) == (1, 1, 0)
    assert service.outreach_spans("attribution.record_delivery", campaign_id)


async def test_a_republished_outreach_is_one_outreach_with_its_send_cost_booked_once(service: Service) -> None:
    stub, bus = service.stub, service.bus
    campaign_id = _new_campaign_id()
    await _publish_outreach(bus, campaign_id, message_id=new_id("msg_"))
    await _wait_known(stub, campaign_id)
    # The same outreach again under another message id, so the stream does not drop it; then a
    # marker outreach: the durable applies in order, so once the marker is known the copy was handled.
    await _publish_outreach(bus, campaign_id, message_id=new_id("msg_"))
    marker = _new_campaign_id()
    await _publish_outreach(bus, marker)
    await _wait_known(stub, marker)
    # The provider took it once, and channels' SENT came twice (the outbox republished it under another event id).
    await _publish_delivery(bus, campaign_id, channels_pb2.DELIVERY_STATE_SENT)
    await _publish_delivery(bus, campaign_id, channels_pb2.DELIVERY_STATE_SENT)
    await _publish_delivery(bus, marker, channels_pb2.DELIVERY_STATE_SENT)
    await eventually(lambda: _sent(stub, marker))
    found = await eventually(lambda: _sent(stub, campaign_id))
    assert (found.funnel.sent, found.cost) == (1, _inr(50))


async def test_lead_and_application_need_a_known_outreach_and_a_loan_keeps_its_campaign(service: Service) -> None:
    stub, bus = service.stub, service.bus
    error = await _rejected(
        stub.CreateLead(service_pb2.CreateLeadRequest(request_id=new_id(), campaign_id="CSELL-NOV-T06-0884"))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert (error.details() or "").startswith("campaign_id: campaign_id 'CSELL-NOV-T06-0884' is not a known outreach")

    first, second = _new_campaign_id(), _new_campaign_id()
    await asyncio.gather(_publish_outreach(bus, first), _publish_outreach(bus, second))
    await _wait_known(stub, first)
    await _wait_known(stub, second)
    await stub.RecordApplication(
        service_pb2.RecordApplicationRequest(request_id=new_id(), loan_number="LA-2025-0002", campaign_id=first)
    )
    error = await _rejected(
        stub.RecordApplication(
            service_pb2.RecordApplicationRequest(request_id=new_id(), loan_number="LA-2025-0002", campaign_id=second)
        )
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    error = await _rejected(
        stub.RecordSanction(
            service_pb2.RecordSanctionRequest(
                request_id=new_id(), loan_number="LA-2025-0002", campaign_id=second, amount=_inr(100_000_00)
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert first in (error.details() or "") and second in (error.details() or "")
    error = await _rejected(
        stub.RecordSanction(
            service_pb2.RecordSanctionRequest(
                request_id=new_id(), loan_number="LA-2025-9999", campaign_id=first, amount=_inr(100_000_00)
            )
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "record the application first" in (error.details() or "")
    assert (await _attribution(stub, second)).funnel.applied == 0
    assert (await _attribution(stub, first)).funnel.sanctioned == 0


async def test_concurrent_copies_of_a_request_get_the_first_answer_and_book_once(service: Service) -> None:
    """A CRM or LOS retrying before the first call returned: on PostgreSQL the copies really race."""
    campaign_id = _new_campaign_id()
    await _publish_outreach(service.bus, campaign_id)
    await _wait_known(service.stub, campaign_id)
    lead = service_pb2.CreateLeadRequest(request_id=new_id(), campaign_id=campaign_id, crm_lead_id="CRM-RACE")
    leads = await asyncio.gather(*(service.stub.CreateLead(lead) for _ in range(6)))
    assert all(answer == leads[0] for answer in leads)
    application = service_pb2.RecordApplicationRequest(
        request_id=new_id(), campaign_id=campaign_id, loan_number=f"LA-{new_id()[-8:]}"
    )
    loans = await asyncio.gather(*(service.stub.RecordApplication(application) for _ in range(6)))
    assert all(answer == loans[0] for answer in loans) and loans[0].loan.loan_number == application.loan_number
    funnel = (await _attribution(service.stub, campaign_id)).funnel
    assert (funnel.responded, funnel.applied) == (1, 1)


async def test_a_conversion_found_by_last_touch_is_recorded_in_that_outreachs_trace(service: Service) -> None:
    campaign_id, profile_id = _new_campaign_id(), new_id("prf_")
    await publish_outreach(
        service.bus, campaign_id, profile_id=profile_id, product_code="FD_FUNDED", at=OUTREACH_CREATED_AT
    )
    await _wait_known(service.stub, campaign_id)
    converted = await service.stub.RecordConversion(
        service_pb2.RecordConversionRequest(
            request_id=new_id("req_"),
            conversion_id=new_id("FD-"),
            kind=attribution_pb2.CONVERSION_KIND_ACCOUNT_FUNDED,
            profile_id=profile_id,
            product_code="FD_FUNDED",
            amount=_inr(20_000_000),
            occur_time=_ts(datetime(2025, 11, 15, 4, 0, tzinfo=UTC)),
        )
    )
    assert converted.conversion.campaign_id == campaign_id

    assert service.outreach_spans("attribution.record_last_touch_conversion", campaign_id)
    # The look-up itself is the call's own span: no conversion named by nobody joins a trace made up from "".
    (lookup,) = [s for s in service.spans.get_finished_spans() if s.name == "attribution.record_conversion"]
    assert lookup.context is not None and lookup.context.trace_id != int(outreach_trace_id(""), 16)
    assert "campaign.id" not in (lookup.attributes or {})
