"""Mapping between the channels domain records and the xsell.channels.v1 / xsell.campaigns.v1 messages."""

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from services.channels.delivery import DeliveryState, Engagement, MessageRecord, OutgoingEmail
from services.channels.outgoing import OutgoingPush, OutgoingSms, OutgoingWhatsApp
from xsell.campaigns.v1 import events_pb2 as campaign_events
from xsell.channels.v1 import events_pb2, resources_pb2
from xsell.type.v1 import channel_pb2

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime) -> Timestamp:
    """What Timestamp.FromDatetime makes of `value` (a naive one is UTC), computed directly: FromDatetime's checks and
    conversions took ~2.4 µs, half of building a DeliveryUpdated (~0.5 µs this way)."""
    since = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - _EPOCH
    return Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1_000)


def channel_name(channel: int) -> str:
    try:
        return channel_pb2.Channel.Name(channel)  # type: ignore[arg-type]
    except ValueError:
        return f"CHANNEL_{channel}"


def channel_value(name: str) -> int:
    try:
        return channel_pb2.Channel.Value(name)
    except ValueError:
        return channel_pb2.CHANNEL_UNSPECIFIED


def delivery_state(state: DeliveryState) -> int:
    return resources_pb2.DeliveryState.Value(f"DELIVERY_STATE_{state.value}")


def delivery_state_from_proto(state: int) -> DeliveryState | None:
    try:
        name = resources_pb2.DeliveryState.Name(state)  # type: ignore[arg-type]
    except ValueError:
        return None
    value = name.removeprefix("DELIVERY_STATE_")
    return DeliveryState(value) if value in DeliveryState.__members__ else None


def engagement_kind(kind: Engagement) -> int:
    return resources_pb2.EngagementKind.Value(f"ENGAGEMENT_KIND_{kind.value}")


def engagement_from_proto(kind: int) -> Engagement | None:
    """The domain engagement of an EngagementKind, or None when it is unset or unknown."""
    try:
        name = resources_pb2.EngagementKind.Name(kind)  # type: ignore[arg-type]
    except ValueError:
        return None
    value = name.removeprefix("ENGAGEMENT_KIND_")
    return Engagement(value) if value in Engagement.__members__ else None


def outgoing_email(event: campaign_events.DispatchRequested) -> OutgoingEmail | None:
    if not event.HasField("email"):
        return None
    email = event.email
    return OutgoingEmail(email.to_address, email.from_name, email.subject, email.html_body, email.text_body)


def outgoing_sms(event: campaign_events.DispatchRequested) -> OutgoingSms | None:
    if not event.HasField("sms"):
        return None
    sms = event.sms
    return OutgoingSms(sms.to_number, sms.sender_id, sms.dlt_template_id, sms.body)


def outgoing_whatsapp(event: campaign_events.DispatchRequested) -> OutgoingWhatsApp | None:
    if not event.HasField("whatsapp"):
        return None
    message = event.whatsapp
    return OutgoingWhatsApp(message.to_number, message.template_name, message.language_code, tuple(message.parameters))


def outgoing_push(event: campaign_events.DispatchRequested) -> OutgoingPush | None:
    if not event.HasField("push"):
        return None
    push = event.push
    return OutgoingPush(push.device_token, push.title, push.body, push.deep_link)


def message_proto(record: MessageRecord) -> resources_pb2.Message:
    message = resources_pb2.Message(
        campaign_id=record.campaign_id,
        channel=channel_value(record.channel),  # type: ignore[arg-type]
        state=delivery_state(record.state),  # type: ignore[arg-type]
        provider_message_id=record.provider_message_id,
    )
    for step in record.timeline:
        entry = message.timeline.add(occur_time=timestamp(step.at), detail=step.detail)
        if (state := step.delivery_state) is not None:
            entry.delivery_state = delivery_state(state)  # type: ignore[assignment]
        elif (kind := step.engagement) is not None:
            entry.engagement_kind = engagement_kind(kind)  # type: ignore[assignment]
    return message


def delivery_updated(
    campaign_id: str, channel: str, state: DeliveryState, at: datetime, reason: str = ""
) -> events_pb2.DeliveryUpdated:
    return events_pb2.DeliveryUpdated(
        campaign_id=campaign_id,
        channel=channel_value(channel),  # type: ignore[arg-type]
        state=delivery_state(state),  # type: ignore[arg-type]
        reason=reason,
        occur_time=timestamp(at),
    )
