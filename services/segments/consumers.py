"""NATS handlers: engagement and conversions become events on the person's profile, so audiences can use them."""

from datetime import UTC, datetime

import structlog
from opentelemetry import trace

from plumbing.bus import Delivery, PermanentError
from plumbing.db import Database
from plumbing.outbox import Inbox, utcnow
from plumbing.telemetry import outreach_span
from services import streams
from services.segments import store
from services.segments.activity import Activity
from services.segments.records import IncomingEvent
from services.segments.values import Value
from xsell.attribution.v1 import events_pb2 as attribution_events
from xsell.channels.v1 import events_pb2 as channel_events
from xsell.channels.v1 import resources_pb2 as channel_resources
from xsell.type.v1 import channel_pb2

log = structlog.get_logger(__name__)


def engagement_event_name(channel: int, kind: int) -> str:
    """`email_opened`, `whatsapp_replied`...: the recipe's own names (email_opened, push_clicked)."""
    channel_name = channel_pb2.Channel.Name(channel).removeprefix("CHANNEL_").lower()  # type: ignore[arg-type]
    kind_name = channel_resources.EngagementKind.Name(kind).removeprefix("ENGAGEMENT_KIND_").lower()  # type: ignore[arg-type]
    return f"{channel_name}_{kind_name}"


def _when(stamp_set: bool, moment: datetime) -> datetime:
    return moment if stamp_set else utcnow()


class ProfileActivityConsumers:
    """Applies each message once (inbox) and in the same transaction as the memberships it changes."""

    def __init__(self, db: Database, activity: Activity, tracer: trace.Tracer) -> None:
        self.db = db
        self.activity = activity
        self.inbox = Inbox(store.inbox)
        self.tracer = tracer

    async def on_engagement(self, event: channel_events.EngagementRecorded, delivery: Delivery) -> None:
        if not event.profile_id or not event.campaign_id:
            # Without the person there is no profile to record it on; retrying cannot help.
            raise PermanentError("EngagementRecorded without profile_id or campaign_id")
        name = engagement_event_name(event.channel, event.kind)
        occurred = _when(event.HasField("occur_time"), event.occur_time.ToDatetime(tzinfo=UTC))
        incoming = IncomingEvent(
            event_id=f"engagement:{event.event_id}",
            profile_id=event.profile_id,
            name=name,
            occurred_at=occurred,
            properties={"campaign_id": Value.string(event.campaign_id)},
        )
        await self._apply(streams.SEGMENTS_ENGAGEMENT.durable, delivery, incoming, event.campaign_id)

    async def on_conversion(self, event: attribution_events.ConversionRecorded, delivery: Delivery) -> None:
        if not event.profile_id or not event.campaign_id:
            raise PermanentError("ConversionRecorded without profile_id or campaign_id")
        occurred = _when(event.HasField("disburse_time"), event.disburse_time.ToDatetime(tzinfo=UTC))
        properties = {
            "campaign_id": Value.string(event.campaign_id),
            "amount": Value.money(event.amount.minor_units, event.amount.currency_code or "INR"),
        }
        if event.product_code:
            properties["product_code"] = Value.string(event.product_code)
        incoming = IncomingEvent(
            event_id=f"conversion:{event.event_id}",
            profile_id=event.profile_id,
            name="converted",
            occurred_at=occurred,
            properties=properties,
        )
        await self._apply(streams.SEGMENTS_CONVERSION.durable, delivery, incoming, event.campaign_id)

    async def _apply(self, durable: str, delivery: Delivery, incoming: IncomingEvent, campaign_id: str) -> None:
        with outreach_span(self.tracer, f"segments.record {incoming.name}", campaign_id):
            now = utcnow()
            async with self.db.transaction() as session:
                if not await self.inbox.claim(session, durable, delivery.message_id):
                    log.info("redelivery_skipped", durable=durable)
                    return
                await self.activity.record_events(session, [incoming], now)
            log.info("profile_activity_recorded", event_name=incoming.name)
