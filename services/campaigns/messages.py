"""Conversions between the campaigns tables, the domain, and the xsell.campaigns.v1 messages."""

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from services.campaigns.campaigns import CampaignSpec, CampaignState
from services.campaigns.rendering import EmailTemplates, Money, Offer
from xsell.campaigns.v1 import resources_pb2
from xsell.type.v1 import channel_pb2, money_pb2


def timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def channel_name(channel: int) -> str:
    """ "EMAIL" for CHANNEL_EMAIL; "UNSPECIFIED" for unknown numbers too."""
    try:
        return channel_pb2.Channel.Name(channel).removeprefix("CHANNEL_")  # type: ignore[arg-type]
    except ValueError:
        return "UNSPECIFIED"


def channel_value(name: str) -> int:
    return channel_pb2.Channel.Value(f"CHANNEL_{name}")


def state_value(state: str) -> int:
    return resources_pb2.CampaignState.Value(f"CAMPAIGN_STATE_{CampaignState(state).value}")


def spec_from_proto(campaign: resources_pb2.Campaign) -> CampaignSpec:
    amount = None
    if campaign.offer.HasField("amount"):
        amount = Money(campaign.offer.amount.minor_units, campaign.offer.amount.currency_code)
    email = None
    if campaign.content.HasField("email"):
        content = campaign.content.email
        email = EmailTemplates(
            content.subject_template, content.html_template, content.text_template, content.from_name
        )
    send_time = campaign.schedule.send_time.ToDatetime(tzinfo=UTC) if campaign.schedule.HasField("send_time") else None
    return CampaignSpec(
        display_name=campaign.display_name,
        labels=tuple(campaign.labels),
        category=campaign.category,
        programme=campaign.programme,
        trigger_code=campaign.trigger_code,
        segment_id=campaign.segment_id,
        channel=channel_name(campaign.channel),
        offer=Offer(campaign.offer.product_code, amount),
        email=email,
        send_time=send_time,
        time_zone=campaign.schedule.time_zone,
    )


def campaign_values(spec: CampaignSpec) -> dict[str, Any]:
    """The columns of the campaigns table that come from the spec."""
    assert spec.email is not None
    return {
        "display_name": spec.display_name,
        "labels": list(spec.labels),
        "category": spec.category,
        "programme": spec.programme,
        "trigger_code": spec.trigger_code,
        "segment_id": spec.segment_id,
        "channel": spec.channel,
        "offer_product_code": spec.offer.product_code,
        "offer_amount_minor": spec.offer.amount.minor_units if spec.offer.amount else None,
        "offer_currency": spec.offer.amount.currency_code if spec.offer.amount else None,
        "subject_template": spec.email.subject_template,
        "html_template": spec.email.html_template,
        "text_template": spec.email.text_template,
        "from_name": spec.email.from_name,
        "send_time": spec.send_time,
        "time_zone": spec.time_zone,
    }


def offer_of(row: Any) -> Offer:
    amount = None if row.offer_amount_minor is None else Money(row.offer_amount_minor, row.offer_currency or "INR")
    return Offer(row.offer_product_code, amount)


def email_templates_of(row: Any) -> EmailTemplates:
    return EmailTemplates(row.subject_template, row.html_template, row.text_template, row.from_name)


def offer_proto(offer: Offer) -> resources_pb2.Offer:
    message = resources_pb2.Offer(product_code=offer.product_code)
    if offer.amount is not None:
        message.amount.CopyFrom(
            money_pb2.Money(minor_units=offer.amount.minor_units, currency_code=offer.amount.currency_code)
        )
    return message


def campaign_proto(row: Any) -> resources_pb2.Campaign:
    campaign = resources_pb2.Campaign(
        campaign_key=row.campaign_key,
        display_name=row.display_name,
        labels=list(row.labels),
        category=row.category,  # type: ignore[arg-type]
        programme=row.programme,
        trigger_code=row.trigger_code,
        segment_id=row.segment_id,
        segment_version=row.segment_version,
        channel=channel_value(row.channel),  # type: ignore[arg-type]
        offer=offer_proto(offer_of(row)),
        content=resources_pb2.Content(
            email=resources_pb2.EmailContent(
                subject_template=row.subject_template,
                html_template=row.html_template,
                text_template=row.text_template,
                from_name=row.from_name,
            )
        ),
        schedule=resources_pb2.Schedule(time_zone=row.time_zone),
        state=state_value(row.state),  # type: ignore[arg-type]
        outreach_count=row.outreach_count,
        create_time=timestamp(row.created_at),
        version=row.version,
        author=row.author,
        approver=row.approver or "",
        pause_reason=row.pause_reason or "",
    )
    if row.send_time is not None:
        campaign.schedule.send_time.CopyFrom(timestamp(row.send_time))
    if row.launched_at is not None:
        campaign.launch_time.CopyFrom(timestamp(row.launched_at))
    return campaign


def outreach_proto(row: Any) -> resources_pb2.Outreach:
    """From an outreaches row, or the dict about to be inserted as one."""
    values: dict[str, Any] = row if isinstance(row, dict) else dict(row._mapping)
    amount = values["offer_amount_minor"]
    money = None if amount is None else Money(amount, values["offer_currency"] or "INR")
    return resources_pb2.Outreach(
        campaign_id=values["campaign_id"],
        campaign_key=values["campaign_key"],
        profile_id=values["profile_id"],
        channel=channel_value(values["channel"]),  # type: ignore[arg-type]
        trigger_code=values["trigger_code"],
        offer=offer_proto(Offer(values["offer_product_code"], money)),
        labels=list(values["labels"]),
        category=values["category"],
        create_time=timestamp(values["created_at"]),
    )


def audit_proto(row: Any) -> resources_pb2.CampaignAuditEntry:
    return resources_pb2.CampaignAuditEntry(
        campaign_key=row.campaign_key,
        version=row.version,
        action=row.action,
        actor=row.actor,
        time=timestamp(row.created_at),
        state=state_value(row.state),  # type: ignore[arg-type]
        note=row.note,
    )
