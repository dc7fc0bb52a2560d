"""NATS handlers: outreaches into the ledger, delivery and engagement into the funnel, replies into leads."""

from datetime import UTC, datetime

import structlog
from opentelemetry import trace

from plumbing.bus import Delivery, PermanentError
from plumbing.db import Database
from plumbing.outbox import Inbox
from plumbing.telemetry import outreach_span
from plumbing.times import time_field
from services import streams
from services.attribution import store
from services.attribution.convert import category_name, channel_name
from services.attribution.ledger import REPLY, Ledger
from services.attribution.reporting import labels_key
from services.attribution.rules import CLICKED, DELIVERED, OPENED, RESPONDED, SENT
from xsell.campaigns.v1.events_pb2 import HoldoutAssigned, OutreachCreated, OutreachWithdrawn
from xsell.channels.v1 import resources_pb2 as channels_pb2
from xsell.channels.v1.events_pb2 import DeliveryUpdated, EngagementRecorded

log = structlog.get_logger(__name__)

DELIVERY_STEPS = {channels_pb2.DELIVERY_STATE_SENT: SENT, channels_pb2.DELIVERY_STATE_DELIVERED: DELIVERED}
ENGAGEMENT_STEPS = {
    channels_pb2.ENGAGEMENT_KIND_OPENED: OPENED,
    channels_pb2.ENGAGEMENT_KIND_CLICKED: CLICKED,
    channels_pb2.ENGAGEMENT_KIND_REPLIED: RESPONDED,
    channels_pb2.ENGAGEMENT_KIND_DECLINED: RESPONDED,
}


class OutreachNotYetKnown(Exception):
    """A delivery or engagement event arrived before its outreach.

    Not a PermanentError on purpose: OutreachCreated and the channels' events travel on different
    streams and durables, so the outreach may simply not have been applied yet. Raising an ordinary
    exception makes the consumer nak with backoff; the retry finds the outreach, and only an event
    whose outreach never arrives within max_deliver attempts ends up dead-lettered.
    """


class Handlers:
    """One handler per consumed event; each applies its change and its inbox claim in one transaction."""

    def __init__(self, db: Database, inbox: Inbox, ledger: Ledger, tracer: trace.Tracer) -> None:
        self.db = db
        self.inbox = inbox
        self.ledger = ledger
        self.tracer = tracer

    async def on_outreach_created(self, event: OutreachCreated, delivery: Delivery) -> None:
        outreach = event.outreach
        if not outreach.campaign_id:
            raise PermanentError("OutreachCreated without outreach.campaign_id cannot be attributed")
        with outreach_span(self.tracer, "attribution.record_outreach", outreach.campaign_id):
            record = store.Outreach(
                campaign_id=outreach.campaign_id,
                campaign_key=outreach.campaign_key,
                profile_id=outreach.profile_id,
                channel=channel_name(outreach.channel),
                trigger_code=outreach.trigger_code,
                product_code=outreach.offer.product_code,
                labels=list(outreach.labels),
                category=category_name(outreach.category),
                created_at=time_field(outreach, "create_time", datetime.now(UTC)),
            )
            async with self.db.transaction() as session:
                if not await self.inbox.claim(session, streams.ATTRIBUTION_OUTREACH.durable, delivery.message_id):
                    log.info("redelivery_skipped")
                    return
                # The campaign ID is the outreach's identity: a republished event under another
                # message id is recognised here, so the outreach is counted once.
                recorded = await self.ledger.record_outreach(session, record)
            log.info("outreach_recorded" if recorded else "outreach_already_recorded", channel=record.channel)

    async def on_holdout_assigned(self, event: HoldoutAssigned, delivery: Delivery) -> None:
        if not event.campaign_key or not event.profile_id:
            raise PermanentError("HoldoutAssigned without campaign_key or profile_id cannot join a control group")
        assigned_at = time_field(event, "assign_time", datetime.now(UTC))
        async with self.db.transaction() as session:
            if not await self.inbox.claim(session, streams.ATTRIBUTION_HOLDOUT.durable, delivery.message_id):
                log.info("redelivery_skipped")
                return
            # Keyed by (campaign, run, person): a republished event under another message id adds no one.
            recorded = await store.add_holdout(
                session,
                campaign_key=event.campaign_key,
                run_id=event.run_id,
                profile_id=event.profile_id,
                trigger_code=event.trigger_code,
                product_code=event.offer.product_code,
                labels_key=labels_key(event.labels),
                assigned_at=assigned_at,
            )
        log.info("holdout_recorded" if recorded else "holdout_already_recorded")

    async def on_outreach_withdrawn(self, event: OutreachWithdrawn, delivery: Delivery) -> None:
        """Takes back the send and cost booked for an outreach withdrawn before it was sent (Ledger.withdraw_outreach).
        A withdrawal can arrive before its OutreachCreated (another durable): it waits, as a delivery event does."""
        if not event.campaign_id:
            raise PermanentError("OutreachWithdrawn without campaign_id names no outreach")
        with outreach_span(self.tracer, "attribution.withdraw_outreach", event.campaign_id):
            at = time_field(event, "withdraw_time", datetime.now(UTC))
            async with self.db.transaction() as session:
                if not await self.inbox.claim(session, streams.ATTRIBUTION_WITHDRAWAL.durable, delivery.message_id):
                    log.info("redelivery_skipped")
                    return
                locked = await store.lock_outreach(session, event.campaign_id)
                if locked is None:
                    if await store.withdrawn_at(session, event.campaign_id) is not None:
                        log.info("outreach_already_withdrawn")
                        return
                    raise OutreachNotYetKnown(f"outreach {event.campaign_id} is not in the ledger yet")
                withdrawn = await self.ledger.withdraw_outreach(session, locked, at)
            if withdrawn:
                log.info("outreach_withdrawn", reason=event.reason)
            else:
                # Rare: a conversion went to it by last touch in the minutes between its creation and its withdrawal.
                log.warning("withdrawn_outreach_kept", reason=event.reason, steps=sorted(locked.funnel))

    async def on_delivery_updated(self, event: DeliveryUpdated, delivery: Delivery) -> None:
        step = DELIVERY_STEPS.get(event.state)
        await self._reach_step(
            "attribution.record_delivery", streams.ATTRIBUTION_DELIVERY.durable, event, delivery, step
        )

    async def on_engagement_recorded(self, event: EngagementRecorded, delivery: Delivery) -> None:
        step = ENGAGEMENT_STEPS.get(event.kind)
        # A reply such as "YES" is a lead for the RM. A bare "NO" (DECLINED) is a response and no lead: no RM calls
        # someone who said no.
        makes_lead = event.kind == channels_pb2.ENGAGEMENT_KIND_REPLIED
        await self._reach_step(
            "attribution.record_engagement",
            streams.ATTRIBUTION_ENGAGEMENT.durable,
            event,
            delivery,
            step,
            makes_lead=makes_lead,
        )

    async def _reach_step(
        self,
        span_name: str,
        durable: str,
        event: DeliveryUpdated | EngagementRecorded,
        delivery: Delivery,
        step: str | None,
        *,
        makes_lead: bool = False,
    ) -> None:
        if not event.campaign_id:
            raise PermanentError(f"{type(event).__name__} without campaign_id cannot be attributed")
        with outreach_span(self.tracer, span_name, event.campaign_id):
            at = time_field(event, "occur_time", datetime.now(UTC))
            async with self.db.transaction() as session:
                if not await self.inbox.claim(session, durable, delivery.message_id):
                    log.info("redelivery_skipped")
                    return
                if step is None:
                    # Failures, bounces, unsubscribes... are not funnel steps; claimed so they are not re-read.
                    return
                locked = await store.lock_outreach(session, event.campaign_id)
                if locked is None:
                    raise OutreachNotYetKnown(f"outreach {event.campaign_id} is not in the ledger yet")
                if makes_lead:
                    # One lead per outreach however often they reply; creating it reaches RESPONDED.
                    lead, created = await self.ledger.record_lead(
                        session, campaign_id=event.campaign_id, crm_lead_id="", origin=REPLY, at=at, locked=locked
                    )
                    if created:
                        log.info("lead_created", origin="reply", lead_id=lead.lead_id)
                elif step in (SENT, DELIVERED):
                    # The provider took the message: its send cost is booked now.
                    await self.ledger.reach_sent(session, locked, step, at)
                else:
                    await self.ledger.reach_step(session, locked, step, at)
            log.info("funnel_step_reached", step=step)
