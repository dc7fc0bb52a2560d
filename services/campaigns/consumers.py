"""NATS handlers: channels' delivery states and engagement, recorded on the outreach they are about."""

from datetime import UTC, datetime

import structlog

from plumbing.bus import Delivery
from plumbing.db import Database
from services.campaigns import store
from xsell.channels.v1 import events_pb2 as channel_events
from xsell.channels.v1 import resources_pb2 as channel_resources

log = structlog.get_logger(__name__)

DELIVERY_COLUMNS = {
    channel_resources.DELIVERY_STATE_SENT: "sent_at",
    channel_resources.DELIVERY_STATE_DELIVERED: "delivered_at",
    channel_resources.DELIVERY_STATE_FAILED: "failed_at",
}
ENGAGEMENT_COLUMNS = {
    channel_resources.ENGAGEMENT_KIND_OPENED: "opened_at",
    channel_resources.ENGAGEMENT_KIND_CLICKED: "clicked_at",
    channel_resources.ENGAGEMENT_KIND_REPLIED: "replied_at",
    channel_resources.ENGAGEMENT_KIND_DECLINED: "replied_at",  # a "NO" is an answer: no follow-up asks again
    channel_resources.ENGAGEMENT_KIND_UNSUBSCRIBED: "opted_out_at",
    channel_resources.ENGAGEMENT_KIND_BOUNCED: "bounced_at",
    channel_resources.ENGAGEMENT_KIND_COMPLAINED: "complained_at",
}


def _when(stamp: object, has: bool) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC) if has else datetime.now(UTC)  # type: ignore[attr-defined]


class OutreachSignals:
    """Sets the first time of each delivery state or engagement kind on the outreach.

    Idempotent without an inbox: a column is set only while it is NULL, so a redelivered event
    changes nothing. Events for campaign IDs this service does not know (other deployments'
    test traffic) are acknowledged and ignored.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def on_delivery(self, event: channel_events.DeliveryUpdated, delivery: Delivery) -> None:
        column = DELIVERY_COLUMNS.get(event.state)
        if column is None or not event.campaign_id:
            return
        async with self.db.transaction() as session:
            await store.record_signal(
                session, event.campaign_id, column, _when(event.occur_time, event.HasField("occur_time"))
            )

    async def on_engagement(self, event: channel_events.EngagementRecorded, delivery: Delivery) -> None:
        column = ENGAGEMENT_COLUMNS.get(event.kind)
        if column is None or not event.campaign_id:
            return
        async with self.db.transaction() as session:
            await store.record_signal(
                session, event.campaign_id, column, _when(event.occur_time, event.HasField("occur_time"))
            )
