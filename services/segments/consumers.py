"""NATS handlers: engagement, conversions and bulk event feeds become events on people's profiles."""

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing import bounces
from plumbing.bus import ConsumerSpec, Delivery, PermanentError
from plumbing.db import Database
from plumbing.errors import DomainError, InvalidArgument
from plumbing.outbox import Inbox, utcnow
from plumbing.telemetry import CAMPAIGN_ID, outreach_span, outreach_spans
from plumbing.times import time_field, utc_time
from services import streams
from services.segments import store, suppressions
from services.segments.activity import Activity
from services.segments.records import MAX_BATCH, IncomingEvent, validate_events
from services.segments.values import Value
from xsell.attribution.v1 import events_pb2 as attribution_events
from xsell.channels.v1 import events_pb2 as channel_events
from xsell.channels.v1 import resources_pb2 as channel_resources
from xsell.segments.v1 import events_pb2, resources_pb2, service_pb2
from xsell.type.v1 import channel_pb2

log = structlog.get_logger(__name__)


def engagement_event_name(channel: int, kind: int) -> str:
    """`email_opened`, `whatsapp_replied`...: the recipe's own names (email_opened, push_clicked)."""
    channel_name = channel_pb2.Channel.Name(channel).removeprefix("CHANNEL_").lower()  # type: ignore[arg-type]
    kind_name = channel_resources.EngagementKind.Name(kind).removeprefix("ENGAGEMENT_KIND_").lower()  # type: ignore[arg-type]
    return f"{channel_name}_{kind_name}"


# What a recipient's own action on a message means for every later send on that channel.
_SUPPRESSING = {
    channel_resources.ENGAGEMENT_KIND_UNSUBSCRIBED: resources_pb2.SUPPRESSION_REASON_OPT_OUT,
    channel_resources.ENGAGEMENT_KIND_COMPLAINED: resources_pb2.SUPPRESSION_REASON_COMPLAINT,
}


# The bounces that refuse an address for a while (plumbing.bounces.FOR_A_WHILE): their reason, and who said so.
_FOR_A_WHILE = {
    bounces.DND: (resources_pb2.SUPPRESSION_REASON_DND_REGISTRY, "on the DND registry, said the SMS provider"),
    bounces.UNREACHABLE: (resources_pb2.SUPPRESSION_REASON_UNREACHABLE, "unreachable there, said the provider"),
}


WHATSAPP_SETTING_NOTE = "stopped marketing messages in WhatsApp's settings"
"""The start of the note of an opt-out WhatsApp's own setting made: the only kind a resubscribe lifts."""


def _setting_change(event: channel_events.EngagementRecorded) -> tuple[str, bool] | None:
    """(channel, True) when the event is the person stopping marketing messages in WhatsApp's own setting (a
    `user_preferences` stop, or Meta's 131050 on a message), (channel, False) when it is them resuming there, None for
    anything else."""
    if event.detail != bounces.WHATSAPP_MARKETING_SETTING or event.kind not in _SETTING_KINDS:
        return None
    return suppressions.channel_key(event.channel), event.kind == channel_resources.ENGAGEMENT_KIND_UNSUBSCRIBED


_SETTING_KINDS = frozenset(
    {channel_resources.ENGAGEMENT_KIND_UNSUBSCRIBED, channel_resources.ENGAGEMENT_KIND_RESUBSCRIBED}
)


def _suppression_for(
    event: channel_events.EngagementRecorded, decline_for: timedelta, recheck_after: Mapping[str, timedelta]
) -> dict[str, Any] | None:
    """An unsubscribe (a STOP, an unsubscribe link, WhatsApp's "stopped marketing messages") or a spam complaint
    suppresses the person on that channel, with no expiry, until someone lifts it with RemoveSuppression. A bounce that
    says the address is bad (5.1.1 no such mailbox, a push token FCM no longer knows...: plumbing.bounces) suppresses
    them on that channel as a hard_bounce, until their address there changes (or RemoveSuppression). A bounce that
    refuses the address for a while suppresses the channel for `recheck_after[its word]` from the refusal, then it is
    tried again: an SMS to a number on the Do-Not-Disturb registry (DND_REGISTRY), a WhatsApp message to a number not
    on WhatsApp (UNREACHABLE). Any other bounce suppresses nothing (a spam block, a full mailbox: the address is good,
    the next message may go). A bare "NO" to an offer (DECLINED) suppresses them on every channel for `decline_for`
    from when they said it (RECENT_DECLINE): it is the offer they refused, whichever channel asked. Other engagement
    suppresses nothing."""
    kind = channel_resources.EngagementKind.Name(event.kind).removeprefix("ENGAGEMENT_KIND_").lower()  # type: ignore[arg-type]
    note = f"{kind} on campaign {event.campaign_id}"
    if event.kind == channel_resources.ENGAGEMENT_KIND_DECLINED:
        if not decline_for:
            return None
        said = _when(event.HasField("occur_time"), event.occur_time.ToDatetime(tzinfo=UTC))
        return {
            "profile_id": event.profile_id,
            "channel": suppressions.channel_key(channel_pb2.CHANNEL_UNSPECIFIED),
            "reason": suppressions.reason_key(resources_pb2.SUPPRESSION_REASON_RECENT_DECLINE),
            "expire_time": said + decline_for,
            "note": note,
        }
    bounced = event.kind == channel_resources.ENGAGEMENT_KIND_BOUNCED
    if bounced and (word := bounces.for_a_while(event.detail)) is not None:
        refused = _when(event.HasField("occur_time"), event.occur_time.ToDatetime(tzinfo=UTC))
        while_reason, who = _FOR_A_WHILE[word]
        return {
            "profile_id": event.profile_id,
            "channel": suppressions.channel_key(event.channel),
            "reason": suppressions.reason_key(while_reason),
            "expire_time": refused + recheck_after[word],
            "note": f"{who} on campaign {event.campaign_id}",
        }
    reason = _SUPPRESSING.get(event.kind)  # type: ignore[call-overload]
    if reason is not None and event.detail == bounces.WHATSAPP_MARKETING_SETTING:
        note = f"{WHATSAPP_SETTING_NOTE}, on campaign {event.campaign_id}"
    bad = bounces.bad_address(event.detail) if bounced else None
    if bad is not None:
        reason = resources_pb2.SUPPRESSION_REASON_HARD_BOUNCE
        note = f"bounced {bad} on campaign {event.campaign_id}"
    if reason is None:
        return None
    return {
        "profile_id": event.profile_id,
        "channel": suppressions.channel_key(event.channel),
        "reason": suppressions.reason_key(reason),
        "expire_time": None,
        "note": note,
    }


def _when(stamp_set: bool, moment: datetime) -> datetime:
    return moment if stamp_set else utcnow()


@dataclass(frozen=True)
class _Engaged:
    """One engagement to record: its profile event, the suppression it makes, when its message was queued (a bounce
    of an address replaced since suppresses nothing), and a WhatsApp setting's stop or resume."""

    incoming: IncomingEvent
    suppress: list[dict[str, Any]]
    queued: datetime | None
    setting: tuple[str, bool] | None


class ProfileActivityConsumers:
    """Applies each message once (inbox) and in the same transaction as the memberships it changes."""

    def __init__(
        self,
        db: Database,
        activity: Activity,
        tracer: trace.Tracer,
        *,
        retention: timedelta,
        future_skew: timedelta,
        decline_for: timedelta,
        recheck_after: Mapping[str, timedelta],
    ) -> None:
        self.db = db
        self.activity = activity
        self.inbox = Inbox(store.inbox)
        self.tracer = tracer
        self.retention = retention
        self.future_skew = future_skew
        self.decline_for = decline_for
        self.recheck_after = recheck_after

    async def on_engagement_batch(
        self, items: Sequence[tuple[channel_events.EngagementRecorded, Delivery]]
    ) -> list[BaseException | None]:
        """A fetch of channels' engagement recorded in one transaction: the profile events of all of them in one
        pass (opens and clicks, most of them), then each one's suppression or WhatsApp setting in arrival order;
        each message's outcome, in order. A STOP behind a campaign's opens waited a transaction per open before."""
        outcomes: list[BaseException | None] = [None] * len(items)
        taken: list[tuple[int, _Engaged]] = []
        for index, (event, _) in enumerate(items):
            if not event.profile_id or not event.campaign_id:
                # Without the person there is no profile to record it on; retrying cannot help.
                outcomes[index] = PermanentError("EngagementRecorded without profile_id or campaign_id")
                continue
            try:
                occurred = time_field(event, "occur_time", utcnow())
                queued = utc_time(event.queue_time, "queue_time") if event.HasField("queue_time") else None
            except InvalidArgument as error:
                outcomes[index] = error  # dead-lettered at once, naming the field
                continue
            name = engagement_event_name(event.channel, event.kind)
            incoming = IncomingEvent(
                event_id=f"engagement:{event.event_id}",
                profile_id=event.profile_id,
                name=name,
                occurred_at=occurred,
                properties={"campaign_id": Value.string(event.campaign_id)},
            )
            suppression = _suppression_for(event, self.decline_for, self.recheck_after)
            taken.append(
                (index, _Engaged(incoming, [suppression] if suppression else [], queued, _setting_change(event)))
            )
        if not taken:
            return outcomes
        durable = streams.SEGMENTS_ENGAGEMENT.durable
        messages = [(items[index][0].campaign_id, items[index][1].headers) for index, _ in taken]
        names = [f"segments.record {engaged.incoming.name}" for _, engaged in taken]
        recorded: list[tuple[int, _Engaged, bool, bool]] = []
        with outreach_spans(self.tracer, "segments.record", messages, names=names):
            now = utcnow()
            async with self.db.transaction() as session:
                claimed = await self.inbox.claim_many(
                    session, durable, [items[index][1].message_id for index, _ in taken]
                )
                applied = [(index, engaged) for index, engaged in taken if items[index][1].message_id in claimed]
                await self.activity.record_events(session, [engaged.incoming for _, engaged in applied], now)
                # By person, each one's in arrival order: a suppression and a setting change concern their person
                # alone, and rows taken in profile id order (as AddSuppressions' one statement takes them) cannot
                # deadlock with another writer's on PostgreSQL, which arrival order across people could.
                for index, engaged in sorted(applied, key=lambda pair: pair[1].incoming.profile_id):
                    if engaged.suppress or engaged.setting is not None:
                        suppressed, lifted = await self._suppress(session, engaged, now)
                        recorded.append((index, engaged, suppressed, lifted))
                    else:
                        recorded.append((index, engaged, False, False))
        for index, _ in taken:
            if items[index][1].message_id not in claimed:
                log.info("redelivery_skipped", durable=durable, **{CAMPAIGN_ID: items[index][0].campaign_id})
        for index, engaged, suppressed, lifted in recorded:
            log.info(
                "profile_activity_recorded",
                event_name=engaged.incoming.name,
                suppressed=suppressed,
                lifted=lifted,
                **{CAMPAIGN_ID: items[index][0].campaign_id},
            )
        return outcomes

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
            log.info("profile_activity_recorded", event_name=incoming.name, suppressed=False, lifted=False)

    async def _suppress(self, session: AsyncSession, engaged: "_Engaged", now: datetime) -> tuple[bool, bool]:
        """The engagement's suppression, or its WhatsApp setting's stop or resume, in the caller's transaction
        (after its profile event): whether it suppressed, and whether it lifted the setting's opt-out."""
        incoming, setting = engaged.incoming, engaged.setting
        suppress = [s for s in engaged.suppress if not await self._about_a_replaced_address(session, s, engaged.queued)]
        # An opt-out WhatsApp's own setting made replaces only another of its own, never one the person gave
        # another way (a typed STOP): a resume lifts the setting's alone. Decided by the upsert itself.
        by_setting = [s for s in suppress if s["note"].startswith(WHATSAPP_SETTING_NOTE)]
        # The setting's stop and resume take effect in the order the person made them, not the order their
        # webhooks came in: one older than the change recorded last changes nothing.
        latest, known_before = False, False
        if setting is not None:
            latest, known_before = await store.note_setting_change(
                session, incoming.profile_id, setting[0], stopped=setting[1], at=incoming.occurred_at
            )
            if not latest:
                log.info("setting_change_overtaken", event_name=incoming.name)
                suppress = [s for s in suppress if s not in by_setting]
                by_setting = []
        await store.upsert_suppressions(session, [s for s in suppress if s not in by_setting], now)
        await store.upsert_suppressions(session, by_setting, now, only_over=WHATSAPP_SETTING_NOTE)
        # The latest resume lifts the setting's opt-out, and nothing else. Where no change was recorded before
        # it (an opt-out older than setting_changes), only one recorded before the resume happened.
        lifted = (
            setting is not None
            and latest
            and not setting[1]
            and await store.delete_noted_suppression(
                session,
                incoming.profile_id,
                setting[0],
                suppressions.reason_key(resources_pb2.SUPPRESSION_REASON_OPT_OUT),
                note_prefix=WHATSAPP_SETTING_NOTE,
                not_after=None if known_before else incoming.occurred_at,
            )
        )
        return bool(suppress), lifted

    async def _about_a_replaced_address(
        self, session: AsyncSession, suppression: dict[str, Any], queued: datetime | None
    ) -> bool:
        """Whether a suppression about an address (a bounce) concerns one the person has replaced since the message
        was queued: the CRM gave a new address while the bounce was on its way, and the new one is not known bad."""
        if queued is None or suppression["reason"] not in suppressions.ADDRESS_REASONS:
            return False
        changed = await store.address_changed_at(session, suppression["profile_id"], suppression["channel"])
        if changed is None or changed <= queued:
            return False
        log.info("bounce_of_a_replaced_address", channel=suppression["channel"], reason=suppression["reason"])
        return True

    async def on_bulk_ingest(self, request: service_pb2.IngestEventsRequest, delivery: Delivery) -> None:
        """Applies a feed's batch exactly as IngestEvents does, and answers with BulkIngestCompleted.

        The inbox skips a redelivered message; the request_id, shared with the gRPC path, makes a batch
        sent again (by either path) change nothing, and its BulkIngestCompleted repeats the first answer.
        """
        _check_batch("IngestEventsRequest", request.request_id, len(request.events), "events")
        now = utcnow()
        incoming, problems = validate_events(
            request.events, now, retention=self.retention, future_skew=self.future_skew
        )
        span = trace.get_current_span()
        span.set_attribute("segments.batch.size", len(request.events))
        span.set_attribute("segments.batch.rejected", len(problems))
        await self._apply_batch(
            streams.SEGMENTS_BULK_INGEST,
            delivery,
            request.request_id,
            lambda session: self.activity.ingest(session, request, incoming, problems, now, transport="nats"),
        )

    async def on_bulk_profiles(self, request: service_pb2.UpsertProfilesRequest, delivery: Delivery) -> None:
        """Applies a feed's batch of profiles exactly as UpsertProfiles does (new addresses lift their bounces,
        memberships follow), and answers with BulkIngestCompleted; once, by the inbox and the request_id shared with
        gRPC."""
        _check_batch("UpsertProfilesRequest", request.request_id, len(request.profiles), "profiles")
        now = utcnow()
        await self._apply_batch(
            streams.SEGMENTS_BULK_PROFILES,
            delivery,
            request.request_id,
            lambda session: self.activity.upsert_profiles(session, request, now, transport="nats"),
        )

    async def _apply_batch(
        self,
        consumer: ConsumerSpec,
        delivery: Delivery,
        request_id: str,
        apply: Callable[
            [AsyncSession], Awaitable[service_pb2.IngestEventsResponse | service_pb2.UpsertProfilesResponse]
        ],
    ) -> None:
        """A bulk feed's batch applied once (the inbox; `apply` keeps the request_id's first answer), in the
        transaction that writes its BulkIngestCompleted, which names the feed subject it answers."""
        durable = consumer.durable
        try:
            async with self.db.transaction() as session:
                if not await self.inbox.claim(session, durable, delivery.message_id):
                    log.info("redelivery_skipped", durable=durable)
                    return
                response = await apply(session)
                await self.activity.outbox.add(
                    session,
                    streams.BULK_INGEST_COMPLETED,
                    events_pb2.BulkIngestCompleted(
                        request_id=request_id,
                        accepted_count=response.accepted_count,
                        errors=response.errors,
                        subject=consumer.filter_subject,
                    ),
                )
        except DomainError as error:
            # A request_id reused for another batch, or one too long: the same message can never apply.
            raise PermanentError(str(error)) from None
        log.info(
            "bulk_batch_applied",
            subject=consumer.filter_subject,
            accepted=response.accepted_count,
            rejected=len(response.errors),
        )


def _check_batch(kind: str, request_id: str, size: int, records: str) -> None:
    """A feed's batch that can never apply (no request_id, an empty or oversized one) is dead-lettered at once."""
    if not request_id:
        raise PermanentError(f"{kind} without request_id; the feed must name each batch")
    if not 1 <= size <= MAX_BATCH:
        raise PermanentError(f"{kind} must hold 1 to {MAX_BATCH} {records}, got {size}")
