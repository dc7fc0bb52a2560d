"""NATS handlers: channels' delivery states and engagement, recorded on the outreach they are about."""

from datetime import UTC, datetime
from typing import Any

import structlog

from plumbing import bounces
from plumbing.bus import Delivery
from plumbing.db import Database
from services.campaigns import automation_store, store
from services.campaigns.automation import automation_of
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
# The signals that say the message did not reach the person: on a campaign with fallback_on_failure, the outreach's
# fallback to a later channel is then due.
FAILURE_COLUMNS = frozenset({"failed_at", "bounced_at"})


def _when(stamp: object, has: bool) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC) if has else datetime.now(UTC)  # type: ignore[attr-defined]


class OutreachSignals:
    """Sets the first time of each delivery state or engagement kind on the outreach.

    Idempotent without an inbox: a column is set only while it is NULL, so a redelivered event
    changes nothing. Events for campaign IDs this service does not know (other deployments'
    test traffic) are acknowledged and ignored. A failure or a bounce also makes the outreach's
    fallback due, on a campaign that falls back (the follow-up runner creates it).
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def on_delivery(self, event: channel_events.DeliveryUpdated, delivery: Delivery) -> None:
        column = DELIVERY_COLUMNS.get(event.state)
        if column is None or not event.campaign_id:
            return
        at = _when(event.occur_time, event.HasField("occur_time"))
        await self._record(event.campaign_id, column, at, reason=event.reason)

    async def on_engagement(self, event: channel_events.EngagementRecorded, delivery: Delivery) -> None:
        column = ENGAGEMENT_COLUMNS.get(event.kind)
        if column is None or not event.campaign_id:
            return
        if column == "bounced_at" and bounces.for_a_while(event.detail) == bounces.UNREACHABLE:
            # Not on WhatsApp: a fact about the channel, not a bad list, which Meta does not hold against the sender.
            # The message is FAILED already (its DeliveryUpdated), and that is what makes its fallback due; as a
            # bounce it would count towards the bounce rate that pauses the campaign, and so stop the fallbacks.
            return
        await self._record(event.campaign_id, column, _when(event.occur_time, event.HasField("occur_time")))

    async def _record(self, campaign_id: str, column: str, at: datetime, *, reason: str = "") -> None:
        async with self.db.transaction() as session:
            await store.record_signal(session, campaign_id, column, at, reason=reason)
            if column in FAILURE_COLUMNS:
                await self._fallback_due(session, campaign_id)

    async def _fallback_due(self, session: Any, campaign_id: str) -> None:
        facts = await automation_store.outreach_campaign(session, campaign_id)
        if facts is None or facts.test or facts.withdrawn_at is not None or not automation_of(facts).fallback:
            return
        if facts.fallback_due_at is None and facts.fallback_state is None:
            # Due now, not at the failure's own time: the runner takes them in the order they became due.
            await automation_store.stamp_fallback_due(session, campaign_id, datetime.now(UTC))
            log.info("fallback_due", campaign_id=campaign_id)
