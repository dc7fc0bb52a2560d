"""NATS handler: a person entering a segment fires the triggered campaigns on it, once per cool-down."""

from datetime import UTC, datetime
from typing import Any

import structlog

from plumbing.bus import Delivery
from plumbing.db import Database
from plumbing.outbox import Inbox, utcnow
from services import streams
from services.campaigns import automation_store, store
from services.campaigns.automation import automation_of
from services.campaigns.campaign_ids import month_code
from services.campaigns.campaigns import CampaignState
from services.campaigns.outreach_maker import OutreachMaker
from services.campaigns.person_client import PersonLookup
from services.campaigns.triggers import cool_down_over, fires, trigger_day
from xsell.segments.v1 import events_pb2 as segment_events

log = structlog.get_logger(__name__)


class TriggerHandler:
    """Applies MembershipChanged ENTERED to the RUNNING triggered campaigns pinned to that segment version.

    The person is looked up in segments before the transaction (a SQLite write lock must not wait on
    the network); then one transaction claims the message in the inbox and creates each campaign's
    outreach with its events, so a redelivered message creates nothing more.
    """

    def __init__(self, db: Database, people: PersonLookup, maker: OutreachMaker) -> None:
        self.db = db
        self.people = people
        self.maker = maker
        self.inbox = Inbox(store.inbox)

    async def on_membership_changed(self, event: segment_events.MembershipChanged, delivery: Delivery) -> None:
        if event.change != segment_events.MEMBERSHIP_CHANGE_ENTERED or not event.profile_id:
            return
        changed_at = event.change_time.ToDatetime(tzinfo=UTC) if event.HasField("change_time") else utcnow()
        async with self.db.transaction() as session:
            candidates = await automation_store.campaigns_on_segment(
                session, event.segment_id, CampaignState.RUNNING.value
            )
        firing = [
            c
            for c in candidates
            if automation_of(c).trigger is not None
            and fires(changed_at, c.launched_at, event.segment_version, c.segment_version)
        ]
        if not firing:
            return
        now = utcnow()
        member = await self.people.member(event.profile_id, now)
        if member is None:
            log.info("trigger_profile_missing", profile_id=event.profile_id)
            return
        async with self.db.transaction() as session:
            if not await self.inbox.claim(session, streams.CAMPAIGNS_TRIGGERS.durable, delivery.message_id):
                log.info("trigger_redelivery_skipped")
                return
            for candidate in firing:
                # Read again in this transaction: a pause or cancel that committed first wins.
                campaign = await store.get_campaign(session, candidate.campaign_key)
                if campaign is not None and campaign.state == CampaignState.RUNNING:
                    outcome = await self._fire(session, campaign, member, now)
                    log.info(
                        "trigger_applied",
                        campaign_key=campaign.campaign_key,
                        trigger_code=campaign.trigger_code,
                        profile_id=member.profile_id,
                        outcome=outcome,
                    )

    async def _fire(self, session: Any, campaign: Any, member: Any, now: datetime) -> str:
        rule = automation_of(campaign).trigger
        assert rule is not None
        # Serialises two triggers of the same person (two replicas, two segments) until this transaction ends.
        await store.lock_people(session, [member.profile_id])
        last = await automation_store.last_trigger_outreach_at(session, campaign.campaign_key, member.profile_id)
        if not cool_down_over(last, now, rule.cool_down):
            return "cool_down"
        run = await automation_store.ensure_run(
            session,
            campaign,
            kind=automation_store.TRIGGER,
            month=month_code(now, campaign.time_zone),
            now=now,
            occurrence=trigger_day(now, campaign.time_zone),
        )
        if await automation_store.judged_in_run(session, run.run_id, member.profile_id):
            return "judged_today"
        made = await self.maker.make(session, campaign, run, member, now)
        return made.campaign_id or made.left_out or "left_out"
