"""Outreaches for many people of one run at once: the gate, campaign IDs, rendering, and the rows and events written."""

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.bus import CAMPAIGN_ID_HEADER, MSG_ID_HEADER
from plumbing.db import after_commit
from plumbing.ids import new_id
from plumbing.telemetry import outreach_ids
from services import streams
from services.campaigns import store
from services.campaigns.audience import Exclusion
from services.campaigns.campaign_ids import format_campaign_id
from services.campaigns.content import CompiledContent, contact_address, unavailable_reason
from services.campaigns.content_files import ContentLibrary
from services.campaigns.content_messages import dispatch_message
from services.campaigns.messages import channel_value, offer_proto, timestamp
from services.campaigns.rendering import Offer, RenderFailed
from services.campaigns.scheduling import QuietHours, recipient_time_zone
from services.campaigns.segments_client import AudienceMember
from services.campaigns.selection import Admitted, AudienceGate
from xsell.campaigns.v1 import events_pb2, resources_pb2

OUTREACH_ID_PREFIX = "xsell-outreach:"
"""What plumbing.telemetry.outreach_ids hashes before a campaign ID (tests/unit/campaigns/test_outreach_headers.py
holds the two together)."""

RENDER_REASON_LENGTH = 40
"""run_exclusions.reason holds 40 characters: the start of a render failure's reason ("missing variable …")."""


def outreach_columns(campaign: Any, run_id: str, offer: Offer, now: datetime) -> dict[str, Any]:
    """The columns of an outreach row that every outreach of one run created at `now` shares."""
    return {
        "campaign_key": campaign.campaign_key,
        "run_id": run_id,
        "trigger_code": campaign.trigger_code,
        "offer_product_code": offer.product_code,
        "offer_amount_minor": offer.amount.minor_units if offer.amount else None,
        "offer_currency": offer.amount.currency_code if offer.amount else None,
        "labels": list(campaign.labels),
        "category": campaign.category,
        "created_at": now,
    }


@dataclass
class PageRows:
    """What a page inserts, as tuples of driver values (store.DriverValues): outreach rows in the order of
    store.PAGE_OUTREACH_COLUMNS (the person's columns, with the DispatchRequested payload, then the run's),
    outbox events in the order of store.PAGE_EVENT_COLUMNS, and (campaign ID, profile id, channel) of each
    outreach for the contact ledger; render failures as exclusion rows; (campaign ID, until, why) of each outreach
    created held back for the recipient's quiet hours (dispatch_now). Once written, the outbox seqs the events were
    given where the driver tells them (store.insert_page)."""

    outreaches: list[tuple[Any, ...]]
    events: list[tuple[Any, ...]]
    created: list[tuple[str, str, str]]
    render_failures: list[dict[str, Any]]
    dispatched: int = 0
    event_seqs: range | None = None
    held: list[tuple[str, datetime, str]] = field(default_factory=list)


def outreach_traceparent(campaign_id: str) -> str:
    """The W3C traceparent of an outreach's root span, sampled: the trace and span ids plumbing.telemetry.outreach_ids
    derives from the campaign ID, read as hex from the same digest instead of through integers (half the time)."""
    digest = hashlib.sha256(f"{OUTREACH_ID_PREFIX}{campaign_id}".encode()).hexdigest()
    trace_id, span_id = digest[:32], digest[32:48]
    if trace_id.strip("0") and span_id.strip("0"):
        return f"00-{trace_id}-{span_id}-01"
    numbers = outreach_ids(campaign_id)  # an all-zero id, which outreach_ids replaces (never seen in practice)
    return f"00-{numbers[0]:032x}-{numbers[1]:016x}-01"


def outreach_headers(event_id: str, campaign_id: str, traceparent: str | None = None) -> str:
    """The outbox headers of an outreach's event as JSON text: the message id, the outreach's trace (W3C
    traceparent, the span the trace and its root span id derive from the campaign ID, as
    plumbing.telemetry.outreach_context and the propagator write it) and the campaign ID header.

    Written directly rather than through an attached context, the propagator and json.dumps, which were a
    fifth of building a row; nothing needs escaping: event ids are ULID-based, campaign IDs are upper-case
    letters, digits and hyphens (format_campaign_id, from validated parts). `traceparent`: the outreach's,
    when the caller has it already (an outreach's two events share it).
    """
    return (
        f'{{"{MSG_ID_HEADER}": "{event_id}", "traceparent": "{traceparent or outreach_traceparent(campaign_id)}", '
        f'"{CAMPAIGN_ID_HEADER}": "{campaign_id}"}}'
    )


class OutreachRows:
    """Builds one run's rows; what every outreach of the run shares (offer, labels, the event's constant
    fields, the page's time) is built and converted to driver values once per page instead of once per person.

    `wake_relay`: called once a page that wrote events has committed (the outbox relay's notify).
    `dispatch_now`: a trigger's outreach is dispatched at once (its DispatchRequested goes with its
    OutreachCreated), or at the end of the recipient's `quiet_hours`; a release's waits for its step.
    """

    def __init__(
        self,
        campaign: Any,
        run: Any,
        compiled: CompiledContent,
        offer: Offer,
        library: ContentLibrary,
        values: store.DriverValues,
        now: datetime,
        *,
        wake_relay: Callable[[], None] | None = None,
        dispatch_now: bool = False,
        quiet_hours: QuietHours | None = None,
    ) -> None:
        self.campaign = campaign
        self.run = run
        self.compiled = compiled
        self.offer = offer
        self.library = library
        self.values = values
        self.wake_relay = wake_relay
        self.now = now
        self.dispatch_now = dispatch_now
        self.quiet_hours = quiet_hours
        shared = outreach_columns(campaign, run.run_id, offer, now)
        shared["labels"] = values.json(shared["labels"])
        shared["created_at"] = values.time(now)
        self._shared_columns = tuple(shared[name] for name in store.PAGE_RUN_COLUMNS)
        self._shared_amount = (shared["offer_amount_minor"], shared["offer_currency"])
        self._now_value = shared["created_at"]
        self._event_time = values.event_time(now)
        self._now_stamp = timestamp(now)
        shared_outreach = resources_pb2.Outreach(
            campaign_key=campaign.campaign_key,
            trigger_code=campaign.trigger_code,
            offer=offer_proto(offer),
            labels=list(campaign.labels),
            category=campaign.category,
            create_time=self._now_stamp,
            run_id=run.run_id,
        )
        # An OutreachCreated is this, serialised once, followed by the person's own fields: protobuf parsers merge
        # the two occurrences of `outreach` into one message (the encoding's rule for a repeated embedded field),
        # so nothing shared is copied into a message per person.
        self._created_prefix = events_pb2.OutreachCreated(outreach=shared_outreach).SerializeToString()
        self._channel_values = {channel: channel_value(channel) for channel in compiled.order}

    def page(
        self,
        members: list[AudienceMember],
        channels: dict[str, str],
        sequences: Iterable[int],
        first_ordinal: int,
        offers: Mapping[str, Offer] | None = None,
    ) -> PageRows:
        """One row per member (in order) with the next sequence number; a member whose render fails gets none
        (the number stays unused: IDs are unique, not gapless). `offers`: each member's own offer, when the
        campaign decides it per person (the gate's); otherwise everyone gets the run's.

        Each outreach's events carry its trace (outreach_headers), so the relay, channels and attribution
        continue it; a released outreach records no span of its own (one per person took about a quarter of
        a release's CPU).
        """
        campaign = self.campaign
        # One ULID per page, numbered per event: unique ids without a ULID per person.
        event_prefix = new_id("evt_")
        rows = PageRows([], [], [], [])
        outreaches, events, created_ids = rows.outreaches, rows.events, rows.created
        event_time, now_value, shared_columns = self._event_time, self._now_value, self._shared_columns
        created_prefix, channel_values = self._created_prefix, self._channel_values
        offer, amount_columns = self.offer, self._shared_amount
        for member, sequence in zip(members, sequences, strict=True):
            campaign_id = format_campaign_id(campaign.programme, self.run.month, campaign.trigger_code, sequence)
            profile_id = member.profile_id
            channel = channels[profile_id]
            if offers:
                offer = offers[profile_id]
                amount = offer.amount
                amount_columns = (amount.minor_units, amount.currency_code) if amount is not None else (None, None)
            try:
                rendered = self.compiled.render(
                    channel,
                    self.compiled.context(member.attributes, campaign_id, offer, self.library.products),
                )
            except RenderFailed as failure:
                rows.render_failures.append(self._render_failure(profile_id, failure))
                continue
            time_zone = recipient_time_zone(member.attributes.get("time_zone"), campaign.time_zone)
            event_id = f"{event_prefix}-{len(events):05d}"
            # Set field by field: a message passed to a constructor is copied (a third of this).
            own = events_pb2.OutreachCreated(event_id=event_id)
            outreach = own.outreach
            outreach.campaign_id, outreach.profile_id = campaign_id, profile_id
            outreach.channel = channel_values[channel]  # type: ignore[assignment]
            if offer.amount is not None and self.offer.amount is None:
                # The shared prefix has the product; the person's own amount merges into it.
                outreach.offer.amount.minor_units = offer.amount.minor_units
                outreach.offer.amount.currency_code = offer.amount.currency_code
            created = created_prefix + own.SerializeToString()
            traceparent = outreach_traceparent(campaign_id)
            events.append(
                (
                    event_id,
                    streams.OUTREACH_CREATED,
                    created,
                    outreach_headers(event_id, campaign_id, traceparent),
                    event_time,
                )
            )
            dispatch = dispatch_message(
                campaign_id, profile_id, channel, rendered, contact_address(channel, member.attributes)
            )
            dispatch_after = dispatched_at = payload = None
            if self.dispatch_now:
                release_at = self.quiet_hours.release_time(self.now, time_zone) if self.quiet_hours else self.now
                if release_at > self.now:
                    dispatch_after = self.values.time(release_at)
                    assert self.quiet_hours is not None
                    rows.held.append((campaign_id, release_at, self.quiet_hours.describe(time_zone)))
                else:
                    event_id = f"{event_prefix}-{len(events):05d}"
                    dispatch.event_id = event_id
                    dispatch.request_time.CopyFrom(self._now_stamp)
                    # Published now: the stored payload is the event as published (it is never dispatched again).
                    payload = dispatch.SerializeToString()
                    events.append(
                        (
                            event_id,
                            streams.DISPATCH_REQUESTED,
                            payload,
                            outreach_headers(event_id, campaign_id, traceparent),
                            event_time,
                        )
                    )
                    dispatched_at = now_value
                    rows.dispatched += 1
            # A release's DispatchRequested is published when its distribution step and the person's quiet
            # hours allow (the payload is stored without event id and request time, which are set then).
            outreaches.append(
                (
                    campaign_id,
                    profile_id,
                    channel,
                    first_ordinal + len(outreaches),
                    time_zone,
                    dispatch_after,
                    dispatched_at,
                    payload if payload is not None else dispatch.SerializeToString(),
                    *amount_columns,
                    *shared_columns,
                )
            )
            created_ids.append((campaign_id, profile_id, channel))
        return rows

    def _render_failure(self, profile_id: str, failure: RenderFailed) -> dict[str, Any]:
        return {
            "run_id": self.run.run_id,
            "profile_id": profile_id,
            "campaign_key": self.campaign.campaign_key,
            "kind": Exclusion.RENDER_FAILED.value,
            "reason": failure.reason[:RENDER_REASON_LENGTH],
            "created_at": self.now,
        }


async def create_outreaches(
    session: AsyncSession,
    gate: AudienceGate,
    builder: OutreachRows,
    members: list[AudienceMember],
    *,
    first_ordinal: int,
) -> tuple[Admitted, PageRows]:
    """Admits `members` through the gate, then writes the admitted people's outreaches, their events, their
    contact-ledger entries and the render failures: a fixed number of statements however many people there are."""
    campaign, run, compiled = builder.campaign, builder.run, builder.compiled
    admitted = await gate.admit(
        session,
        campaign,
        run,
        members,
        builder.now,
        order=compiled.order,
        available=lambda channel, member: unavailable_reason(channel, member.attributes) is None,
    )
    rows = PageRows([], [], [], [])
    if admitted.members:
        block = await store.allocate_sequences(
            session, campaign.programme, run.month, campaign.trigger_code, len(admitted.members)
        )
        rows = builder.page(admitted.members, admitted.channels, block.numbers(), first_ordinal, admitted.offers)
    rows.event_seqs = await store.insert_page(session, rows.outreaches, rows.events)
    await store.insert_exclusions(session, rows.render_failures)
    await gate.record_contacts(session, campaign, admitted, rows.created, builder.now, builder.values)
    if rows.events and builder.wake_relay is not None:
        after_commit(session, builder.wake_relay)
    return admitted, rows
