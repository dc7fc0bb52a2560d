"""NATS handlers: outreaches into the ledger, delivery and engagement into the funnel, replies into leads."""

from collections.abc import Sequence
from datetime import UTC, datetime

import structlog
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from plumbing.bus import Delivery, PermanentError
from plumbing.db import Database
from plumbing.errors import InvalidArgument
from plumbing.outbox import Inbox
from plumbing.telemetry import CAMPAIGN_ID, outreach_span, outreach_spans
from plumbing.times import time_field
from services import streams
from services.attribution import store
from services.attribution.convert import category_name, channel_name
from services.attribution.ledger import REPLY, Ledger, RollupChange
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

    def _event_time(self, message: Message, field: str) -> datetime:
        """The message's time `field` (now when unset), InvalidArgument when the views have no local day for it: in a
        fetch, the OverflowError of a time late on 9999-12-31 (already the year 10000 at the views' offset) would fail
        the other messages with it."""
        at = time_field(message, field, datetime.now(UTC))
        try:
            self.ledger.rollup.day(at)
        except OverflowError:
            raise InvalidArgument(
                f"{field} ({at.isoformat()}) falls past 9999-12-31 at the views' UTC offset", field=field
            ) from None
        return at

    async def on_outreach_created_batch(
        self, items: Sequence[tuple[OutreachCreated, Delivery]]
    ) -> list[BaseException | None]:
        """A fetch of campaigns' OutreachCreated recorded in one transaction, each counted as sent on its creation
        day; each message's outcome, in order. The campaign ID is the outreach's identity: a republished event under
        another message id is recognised, so an outreach is counted once."""
        outcomes: list[BaseException | None] = [None] * len(items)
        records: list[tuple[int, store.Outreach]] = []
        for index, (event, _) in enumerate(items):
            outreach = event.outreach
            if not outreach.campaign_id:
                outcomes[index] = PermanentError("OutreachCreated without outreach.campaign_id cannot be attributed")
                continue
            try:
                created_at = self._event_time(outreach, "create_time")
            except InvalidArgument as error:
                outcomes[index] = error
                continue
            record = store.Outreach(
                campaign_id=outreach.campaign_id,
                campaign_key=outreach.campaign_key,
                profile_id=outreach.profile_id,
                channel=channel_name(outreach.channel),
                trigger_code=outreach.trigger_code,
                product_code=outreach.offer.product_code,
                labels=list(outreach.labels),
                category=category_name(outreach.category),
                created_at=created_at,
            )
            records.append((index, record))
        if not records:
            return outcomes
        messages = [(record.campaign_id, items[index][1].headers) for index, record in records]
        with outreach_spans(self.tracer, "attribution.record_outreach", messages):
            async with self.db.transaction() as session:
                claimed = await self.inbox.claim_many(
                    session, streams.ATTRIBUTION_OUTREACH.durable, [items[index][1].message_id for index, _ in records]
                )
                added = await self.ledger.record_outreaches(
                    session, [record for index, record in records if items[index][1].message_id in claimed]
                )
        recorded = {outreach.campaign_id for outreach in added}
        for index, record in records:
            fields = {CAMPAIGN_ID: record.campaign_id}
            if items[index][1].message_id not in claimed:
                log.info("redelivery_skipped", **fields)
            else:
                recorded_now = record.campaign_id in recorded
                log.info(
                    "outreach_recorded" if recorded_now else "outreach_already_recorded",
                    channel=record.channel,
                    **fields,
                )
        return outcomes

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

    async def on_delivery_updated_batch(
        self, items: Sequence[tuple[DeliveryUpdated, Delivery]]
    ) -> list[BaseException | None]:
        """A fetch of channels' delivery receipts applied in one transaction (Ledger.reach_steps): a SENT or
        DELIVERED is a funnel step and books the send cost; a failure is claimed and changes nothing."""
        steps = [(event, delivery, DELIVERY_STEPS.get(event.state), False) for event, delivery in items]
        return await self._reach_steps("attribution.record_delivery", streams.ATTRIBUTION_DELIVERY.durable, steps)

    async def on_engagement_recorded_batch(
        self, items: Sequence[tuple[EngagementRecorded, Delivery]]
    ) -> list[BaseException | None]:
        """A fetch of channels' engagement applied in one transaction. A reply such as "YES" is a lead for the RM;
        a bare "NO" (DECLINED) is a response and no lead: no RM calls someone who said no."""
        steps = [
            (event, delivery, ENGAGEMENT_STEPS.get(event.kind), event.kind == channels_pb2.ENGAGEMENT_KIND_REPLIED)
            for event, delivery in items
        ]
        return await self._reach_steps("attribution.record_engagement", streams.ATTRIBUTION_ENGAGEMENT.durable, steps)

    async def _reach_steps(
        self,
        span_name: str,
        durable: str,
        items: Sequence[tuple[DeliveryUpdated | EngagementRecorded, Delivery, str | None, bool]],
    ) -> list[BaseException | None]:
        """Each message's outcome, in order: None when applied (or a redelivery, or no funnel step), or the error it
        naks or is dead-lettered on. An error of the whole transaction raises, and every message naks on it.

        One transaction per fetch instead of one per message: a receipt's own work is a few rows, and a transaction
        of its own cost several times that (every OutreachCreated is followed by a SENT and a DELIVERED)."""
        outcomes: list[BaseException | None] = [None] * len(items)
        todo: list[tuple[int, datetime]] = []
        for index, (event, _, _, _) in enumerate(items):
            if not event.campaign_id:
                outcomes[index] = PermanentError(f"{type(event).__name__} without campaign_id cannot be attributed")
                continue
            try:
                todo.append((index, self._event_time(event, "occur_time")))
            except InvalidArgument as error:
                outcomes[index] = error
        if not todo:
            return outcomes
        messages = [(items[index][0].campaign_id, items[index][1].headers) for index, _ in todo]
        applied: list[tuple[int, str]] = []
        with outreach_spans(self.tracer, span_name, messages) as spans:
            async with self.db.transaction() as session:
                stepped = {items[index][0].campaign_id for index, _ in todo if items[index][2] is not None}
                locked = await store.lock_outreaches(session, stepped)
                # A receipt whose outreach is not in the ledger yet is not claimed: it naks, and is applied once
                # its OutreachCreated (another durable) is.
                known = [
                    (index, at)
                    for index, at in todo
                    if items[index][2] is None or items[index][0].campaign_id in locked
                ]
                claimed = await self.inbox.claim_many(
                    session, durable, [items[index][1].message_id for index, _ in known]
                )
                changes = []
                # The leads' rollup changes join the fetch's one rollup statement (Ledger.reach_steps).
                leads_rollup: list[RollupChange] = []
                for index, at in known:
                    event, delivery, step, makes_lead = items[index]
                    if delivery.message_id not in claimed:
                        log.info("redelivery_skipped", **{CAMPAIGN_ID: event.campaign_id})
                        continue
                    if step is None:
                        # A failure, bounce, unsubscribe... is no funnel step: claimed so that it is not read again.
                        continue
                    outreach = locked[event.campaign_id]
                    if makes_lead:
                        # One lead per outreach however often they reply; creating it reaches RESPONDED.
                        lead, created = await self.ledger.record_lead(
                            session,
                            campaign_id=event.campaign_id,
                            crm_lead_id="",
                            origin=REPLY,
                            at=at,
                            locked=outreach,
                            rollup_later=leads_rollup,
                        )
                        if created:
                            log.info(
                                "lead_created", origin="reply", lead_id=lead.lead_id, **{CAMPAIGN_ID: event.campaign_id}
                            )
                    else:
                        changes.append((outreach, step, at))
                    applied.append((index, step))
                await self.ledger.reach_steps(session, changes, leads_rollup)
            for position, (index, _) in enumerate(todo):
                event, delivery, step, _ = items[index]
                if step is not None and event.campaign_id not in locked:
                    outcomes[index] = OutreachNotYetKnown(f"outreach {event.campaign_id} is not in the ledger yet")
                    spans[position].set_status(Status(StatusCode.ERROR, "the outreach is not in the ledger yet"))
        for index, step in applied:
            log.info("funnel_step_reached", step=step, **{CAMPAIGN_ID: items[index][0].campaign_id})
        return outcomes
