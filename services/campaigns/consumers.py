"""NATS handlers: channels' delivery states and engagement, recorded on the outreach they are about."""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

from plumbing import bounces
from plumbing.bus import Delivery
from plumbing.db import Database
from plumbing.errors import InvalidArgument
from plumbing.telemetry import CAMPAIGN_ID
from plumbing.times import time_field
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


class OutreachSignals:
    """Sets the first time of each delivery state or engagement kind on the outreach.

    Idempotent without an inbox: a column is set only while it is NULL, so a redelivered event
    changes nothing. Events for campaign IDs this service does not know (other deployments'
    test traffic) are acknowledged and ignored. A failure or a bounce also makes the outreach's
    fallback due, on a campaign that falls back (the follow-up runner creates it).
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def on_delivery_batch(
        self, items: Sequence[tuple[channel_events.DeliveryUpdated, Delivery]]
    ) -> list[BaseException | None]:
        """A fetch of delivery states recorded in one transaction; each message's outcome, in order."""
        signals = [(event.campaign_id, DELIVERY_COLUMNS.get(event.state), event, event.reason) for event, _ in items]
        return await self._record_many(signals)

    async def on_engagement_batch(
        self, items: Sequence[tuple[channel_events.EngagementRecorded, Delivery]]
    ) -> list[BaseException | None]:
        """A fetch of engagement recorded in one transaction; each message's outcome, in order."""
        signals: list[tuple[str, str | None, Any, str]] = []
        for event, _ in items:
            column = ENGAGEMENT_COLUMNS.get(event.kind)
            if column == "bounced_at" and bounces.for_a_while(event.detail) == bounces.UNREACHABLE:
                # Not on WhatsApp: a fact about the channel, not a bad list, which Meta does not hold against the
                # sender. The message is FAILED already (its DeliveryUpdated), and that is what makes its fallback
                # due; as a bounce it would count towards the bounce rate that pauses the campaign, and so stop the
                # fallbacks.
                column = None
            signals.append((event.campaign_id, column, event, ""))
        return await self._record_many(signals)

    async def _record_many(self, signals: Sequence[tuple[str, str | None, Any, str]]) -> list[BaseException | None]:
        """Sets each (campaign ID, column, event, reason)'s column from the event's time, in one transaction (a
        statement per column); a signal without a column or a campaign ID is nothing to record. A failure or a
        bounce also makes the outreach's fallback due."""
        outcomes: list[BaseException | None] = [None] * len(signals)
        rows: list[tuple[str, str, datetime, str]] = []
        for index, (campaign_id, column, event, reason) in enumerate(signals):
            if column is None or not campaign_id:
                continue
            try:
                at = time_field(event, "occur_time", datetime.now(UTC))
            except InvalidArgument as error:
                outcomes[index] = error  # dead-lettered at once, naming the field
                continue
            rows.append((campaign_id, column, at, reason))
        if rows:
            async with self.db.transaction() as session:
                await store.record_signals(session, rows)
                for campaign_id in dict.fromkeys(row[0] for row in rows if row[1] in FAILURE_COLUMNS):
                    await self._fallback_due(session, campaign_id)
        return outcomes

    async def _fallback_due(self, session: Any, campaign_id: str) -> None:
        facts = await automation_store.outreach_campaign(session, campaign_id)
        if facts is None or facts.test or facts.withdrawn_at is not None or not automation_of(facts).fallback:
            return
        if facts.fallback_due_at is None and facts.fallback_state is None:
            # Due now, not at the failure's own time: the runner takes them in the order they became due.
            await automation_store.stamp_fallback_due(session, campaign_id, datetime.now(UTC))
            log.info("fallback_due", **{CAMPAIGN_ID: campaign_id})
