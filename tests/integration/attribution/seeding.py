"""The seed's worked example (CSELL-NOV-T06-0884, ₹17.4 lakh disbursed) and a few more outreaches, put in the
ledger the way production does it: events on NATS from campaigns and channels, LOS calls over gRPC."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.sdk.trace import TracerProvider

from plumbing.bus import Bus
from plumbing.ids import new_id
from plumbing.runtime import ServiceProcess
from services import streams
from services.attribution.app import build
from services.attribution.settings import AttributionSettings
from tests.waiting import eventually
from xsell.attribution.v1 import resources_pb2, service_pb2, service_pb2_grpc
from xsell.campaigns.v1 import events_pb2 as campaign_events
from xsell.campaigns.v1 import resources_pb2 as campaigns_pb2
from xsell.channels.v1 import events_pb2 as channel_events
from xsell.channels.v1 import resources_pb2 as channels_pb2
from xsell.type.v1 import channel_pb2, money_pb2

EXAMPLE = "CSELL-NOV-T06-0884"
SENT_AT = datetime(2025, 11, 13, 3, 45, tzinfo=UTC)  # Nov 13 09:15 in Kolkata
DISBURSED_AT = datetime(2025, 11, 22, 6, 0, tzinfo=UTC)
MSME = "Cross-Sell – MSME"
RETAIL = "Cross-Sell – Retail"


@dataclass
class Service:
    """A running attribution service, a stub on it, the bus its events come from, and its database."""

    process: ServiceProcess
    stub: service_pb2_grpc.AttributionServiceStub
    bus: Bus
    database_url: str


@asynccontextmanager
async def running_service(
    database_url: str,
    nats_url: str,
    bus: Bus,
    tmp_path: Path,
    provider: TracerProvider | None = None,
    **settings: Any,
) -> AsyncIterator[Service]:
    """The service built as production builds it, on port 0, with `settings` over the defaults; stopped on exit."""
    await bus.ensure_streams(streams.ALL_STREAMS)
    configured = AttributionSettings(  # type: ignore[call-arg]
        grpc_port=0, nats_url=nats_url, database_url=database_url, var_dir=tmp_path, **settings
    )
    process = await build(configured, provider or TracerProvider())
    await process.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{process.server.port}")
    try:
        yield Service(process, service_pb2_grpc.AttributionServiceStub(channel), bus, database_url)
    finally:
        await channel.close()
        await process.stop(1)


def ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def inr(minor_units: int) -> money_pb2.Money:
    return money_pb2.Money(minor_units=minor_units, currency_code="INR")


async def publish_outreach(
    bus: Bus,
    campaign_id: str,
    *,
    trigger: str = "T06",
    channel: int = channel_pb2.CHANNEL_EMAIL,
    labels: tuple[str, ...] = (MSME,),
    campaign_key: str = "cmp_msme_gst",
    profile_id: str = "prf_kaveri",
    product_code: str = "MSME_WC_TOPUP",
    at: datetime = SENT_AT,
) -> None:
    event = campaign_events.OutreachCreated(
        event_id=new_id("evt_"),
        outreach=campaigns_pb2.Outreach(
            campaign_id=campaign_id,
            campaign_key=campaign_key,
            profile_id=profile_id,
            channel=channel,  # type: ignore[arg-type]
            trigger_code=trigger,
            offer=campaigns_pb2.Offer(product_code=product_code, amount=inr(174_000_000)),
            labels=list(labels),
            category=campaigns_pb2.CAMPAIGN_CATEGORY_UPSELL_INCREASE_VALUE,
            create_time=ts(at),
        ),
    )
    await bus.js.publish(
        streams.OUTREACH_CREATED,
        event.SerializeToString(),
        headers={"Nats-Msg-Id": event.event_id, "Xsell-Campaign-Id": campaign_id},
    )


async def publish_holdout(
    bus: Bus, profile_id: str, *, labels: tuple[str, ...] = (MSME,), at: datetime = SENT_AT
) -> None:
    event = campaign_events.HoldoutAssigned(
        event_id=new_id("evt_"),
        campaign_key="cmp_msme_gst",
        run_id="run_nov",
        profile_id=profile_id,
        labels=list(labels),
        trigger_code="T06",
        offer=campaigns_pb2.Offer(product_code="MSME_WC_TOPUP", amount=inr(174_000_000)),
        assign_time=ts(at),
    )
    await bus.js.publish(streams.HOLDOUT_ASSIGNED, event.SerializeToString(), headers={"Nats-Msg-Id": event.event_id})


async def publish_withdrawal(
    bus: Bus, campaign_id: str, *, campaign_key: str = "cmp_msme_gst", profile_id: str = "prf_kaveri", at: datetime
) -> None:
    """Campaigns' OutreachWithdrawn: the outreach was outranked before it was sent."""
    event = campaign_events.OutreachWithdrawn(
        event_id=new_id("evt_"),
        campaign_id=campaign_id,
        campaign_key=campaign_key,
        profile_id=profile_id,
        reason="outranked",
        withdraw_time=ts(at),
    )
    await bus.js.publish(
        streams.OUTREACH_WITHDRAWN,
        event.SerializeToString(),
        headers={"Nats-Msg-Id": event.event_id, "Xsell-Campaign-Id": campaign_id},
    )


async def publish_step(bus: Bus, campaign_id: str, *, delivery: int = 0, engagement: int = 0, at: datetime) -> None:
    message: channel_events.DeliveryUpdated | channel_events.EngagementRecorded
    if delivery:
        message = channel_events.DeliveryUpdated(
            event_id=new_id("evt_"),
            campaign_id=campaign_id,
            channel=channel_pb2.CHANNEL_EMAIL,
            state=delivery,  # type: ignore[arg-type]
            occur_time=ts(at),
        )
        subject = streams.DELIVERY_UPDATED
    else:
        message = channel_events.EngagementRecorded(
            event_id=new_id("evt_"),
            campaign_id=campaign_id,
            channel=channel_pb2.CHANNEL_EMAIL,
            kind=engagement,  # type: ignore[arg-type]
            occur_time=ts(at),
        )
        subject = streams.ENGAGEMENT_RECORDED
    await bus.js.publish(
        subject,
        message.SerializeToString(),
        headers={"Nats-Msg-Id": message.event_id, "Xsell-Campaign-Id": campaign_id},
    )


async def wait_sent(stub: service_pb2_grpc.AttributionServiceStub, count: int) -> None:
    """Waits until the views count `count` outreaches (all of them applied from NATS)."""

    async def sent() -> bool:
        report = await stub.GetAttributionReport(service_pb2.GetAttributionReportRequest())
        return report.total.sent >= count

    await eventually(sent)


async def mark_sent(
    bus: Bus, stub: service_pb2_grpc.AttributionServiceStub, *campaign_ids: str, at: datetime = SENT_AT
) -> None:
    """Channels' SENT for each outreach (a provider took it, which books its send cost), applied before returning."""
    for campaign_id in campaign_ids:
        await publish_step(bus, campaign_id, delivery=channels_pb2.DELIVERY_STATE_SENT, at=at)
    for campaign_id in campaign_ids:
        await wait_funnel(stub, campaign_id, "sent")


async def wait_funnel(stub: service_pb2_grpc.AttributionServiceStub, campaign_id: str, step: str) -> None:
    async def reached() -> bool:
        response = await stub.GetCampaignAttribution(service_pb2.GetCampaignAttributionRequest(campaign_id=campaign_id))
        return bool(getattr(response.attribution.funnel, step))

    await eventually(reached)


async def seed_worked_example(bus: Bus, stub: service_pb2_grpc.AttributionServiceStub) -> None:
    """CSELL-NOV-T06-0884 from send to the ₹17.4 lakh disbursement, and one T01 SMS outreach that did not convert.

    Cost of the example: the e-mail send (₹0.50) plus 15 RM minutes at ₹6.50 = ₹98.00.
    """
    await publish_outreach(bus, EXAMPLE)
    await publish_outreach(
        bus,
        "CSELL-NOV-T01-0001",
        trigger="T01",
        channel=channel_pb2.CHANNEL_SMS,
        labels=(RETAIL,),
        campaign_key="cmp_emi_calc",
        profile_id="prf_asha",
        product_code="PL_TOPUP",
    )
    await wait_sent(stub, 2)
    await publish_step(
        bus, EXAMPLE, delivery=channels_pb2.DELIVERY_STATE_SENT, at=datetime(2025, 11, 13, 3, 46, tzinfo=UTC)
    )
    await publish_step(
        bus, EXAMPLE, delivery=channels_pb2.DELIVERY_STATE_DELIVERED, at=datetime(2025, 11, 13, 3, 47, tzinfo=UTC)
    )
    await publish_step(
        bus, EXAMPLE, engagement=channels_pb2.ENGAGEMENT_KIND_OPENED, at=datetime(2025, 11, 13, 8, 0, tzinfo=UTC)
    )
    await publish_step(
        bus, EXAMPLE, engagement=channels_pb2.ENGAGEMENT_KIND_CLICKED, at=datetime(2025, 11, 13, 8, 1, tzinfo=UTC)
    )
    await publish_step(
        bus,
        "CSELL-NOV-T01-0001",
        delivery=channels_pb2.DELIVERY_STATE_SENT,
        at=datetime(2025, 11, 13, 4, 0, tzinfo=UTC),
    )
    await wait_funnel(stub, EXAMPLE, "clicked")
    await wait_funnel(stub, EXAMPLE, "delivered")
    await wait_funnel(stub, "CSELL-NOV-T01-0001", "sent")
    # The "YES" reply: a lead with its RM time, and the outreach responded.
    await publish_step(
        bus, EXAMPLE, engagement=channels_pb2.ENGAGEMENT_KIND_REPLIED, at=datetime(2025, 11, 14, 5, 0, tzinfo=UTC)
    )
    await wait_funnel(stub, EXAMPLE, "responded")
    await stub.RecordApplication(
        service_pb2.RecordApplicationRequest(
            request_id=new_id(),
            loan_number="LA-2025-0884",
            campaign_id=EXAMPLE,
            apply_time=ts(datetime(2025, 11, 15, 6, 0, tzinfo=UTC)),
        )
    )
    await stub.RecordSanction(
        service_pb2.RecordSanctionRequest(
            request_id=new_id(),
            loan_number="LA-2025-0884",
            campaign_id=EXAMPLE,
            amount=inr(174_000_000),
            sanction_time=ts(datetime(2025, 11, 18, 6, 0, tzinfo=UTC)),
        )
    )
    await stub.RecordDisbursement(
        service_pb2.RecordDisbursementRequest(
            request_id=new_id(),
            disbursement_id="DISB-0884-1",
            loan_number="LA-2025-0884",
            campaign_id=EXAMPLE,
            amount=inr(174_000_000),
            disburse_time=ts(DISBURSED_AT),
        )
    )


FIRST_TRANSACTION_AT = datetime(2025, 11, 25, 6, 0, tzinfo=UTC)


async def activate_worked_example(stub: service_pb2_grpc.AttributionServiceStub) -> None:
    """The worked example's first use after funding (Nov 25): its funnel's activated step."""
    await stub.RecordConversion(
        service_pb2.RecordConversionRequest(
            request_id=new_id(),
            conversion_id="TXN-0884-1",
            kind=resources_pb2.CONVERSION_KIND_FIRST_TRANSACTION,
            campaign_id=EXAMPLE,
            amount=inr(2_500_000),
            occur_time=ts(FIRST_TRANSACTION_AT),
        )
    )
