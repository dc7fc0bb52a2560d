"""Outreaches for many people of one run at once: the gate, campaign IDs, rendering, and the rows and events written."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opentelemetry import context as otel_context
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.ids import new_id
from plumbing.outbox import Outbox
from plumbing.telemetry import outreach_context
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
    """What a page inserts: outreach rows (with their DispatchRequested payloads), their events, render failures."""

    outreaches: list[dict[str, Any]]
    events: list[dict[str, Any]]
    render_failures: list[dict[str, Any]]
    dispatched: int = 0


class OutreachRows:
    """Builds one run's rows; what every outreach of the run shares (offer, labels, the event's constant
    fields) is built once per page instead of once per person.

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
        outbox: Outbox,
        now: datetime,
        *,
        dispatch_now: bool = False,
        quiet_hours: QuietHours | None = None,
    ) -> None:
        self.campaign = campaign
        self.run = run
        self.compiled = compiled
        self.offer = offer
        self.library = library
        self.outbox = outbox
        self.now = now
        self.dispatch_now = dispatch_now
        self.quiet_hours = quiet_hours
        self._shared_row: dict[str, Any] = {
            **outreach_columns(campaign, run.run_id, offer, now),
            # Every row has the same keys: the page is one executemany INSERT.
            "dispatch_after": None,
            "dispatched_at": None,
        }
        self._now_stamp = timestamp(now)
        self._shared_outreach = resources_pb2.Outreach(
            campaign_key=campaign.campaign_key,
            trigger_code=campaign.trigger_code,
            offer=offer_proto(offer),
            labels=list(campaign.labels),
            category=campaign.category,
            create_time=self._now_stamp,
            run_id=run.run_id,
        )

    def page(
        self, members: list[AudienceMember], channels: dict[str, str], sequences: Iterable[int], first_ordinal: int
    ) -> PageRows:
        """One row per member (in order) with the next sequence number; a member whose render fails gets none
        (the number stays unused: IDs are unique, not gapless)."""
        campaign = self.campaign
        # One ULID per page, numbered per event: unique ids without a ULID per person.
        event_prefix = new_id("evt_")
        rows = PageRows([], [], [])
        for member, sequence in zip(members, sequences, strict=True):
            campaign_id = format_campaign_id(campaign.programme, self.run.month, campaign.trigger_code, sequence)
            channel = channels[member.profile_id]
            try:
                rendered = self.compiled.render(
                    channel,
                    self.compiled.context(member.attributes, campaign_id, self.offer, self.library.products),
                )
            except RenderFailed as failure:
                rows.render_failures.append(self._render_failure(member.profile_id, failure))
                continue
            time_zone = recipient_time_zone(member.attributes.get("time_zone"), campaign.time_zone)
            row = {
                **self._shared_row,
                "campaign_id": campaign_id,
                "profile_id": member.profile_id,
                "channel": channel,
                "ordinal": first_ordinal + len(rows.outreaches),
                "recipient_time_zone": time_zone,
            }
            created = events_pb2.OutreachCreated(event_id=f"{event_prefix}-{len(rows.events):05d}")
            created.outreach.CopyFrom(self._shared_outreach)
            created.outreach.campaign_id = campaign_id
            created.outreach.profile_id = member.profile_id
            created.outreach.channel = channel_value(channel)  # type: ignore[assignment]
            dispatch = dispatch_message(
                campaign_id, member.profile_id, channel, rendered, contact_address(channel, member.attributes)
            )
            # The outreach's trace is current while its events are built, so they carry it onwards. The trace
            # and its root span id derive from the campaign ID (plumbing.telemetry.outreach_ids), so a released
            # outreach needs no span of its own; recording one per person took about a quarter of a release's CPU.
            token = otel_context.attach(outreach_context(campaign_id))
            try:
                rows.events.append(self.outbox.event(streams.OUTREACH_CREATED, created, campaign_id=campaign_id))
                if self.dispatch_now:
                    release_at = self.quiet_hours.release_time(self.now, time_zone) if self.quiet_hours else self.now
                    if release_at > self.now:
                        row["dispatch_after"] = release_at
                    else:
                        dispatch.event_id = f"{event_prefix}-{len(rows.events):05d}"
                        dispatch.request_time.CopyFrom(self._now_stamp)
                        rows.events.append(
                            self.outbox.event(streams.DISPATCH_REQUESTED, dispatch, campaign_id=campaign_id)
                        )
                        row["dispatched_at"] = self.now
                        rows.dispatched += 1
            finally:
                otel_context.detach(token)
            # A release's is published when its distribution step and the person's quiet hours allow.
            row["dispatch_payload"] = dispatch.SerializeToString()
            rows.outreaches.append(row)
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
    """Admits `members` through the gate, then writes the admitted people's outreaches, their events and
    the render failures: a fixed number of statements however many people there are."""
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
    rows = PageRows([], [], [])
    if admitted.members:
        block = await store.allocate_sequences(
            session, campaign.programme, run.month, campaign.trigger_code, len(admitted.members)
        )
        rows = builder.page(admitted.members, admitted.channels, block.numbers(), first_ordinal)
    await store.insert_outreaches(session, rows.outreaches)
    await store.insert_exclusions(session, rows.render_failures)
    await gate.record_contacts(session, campaign, admitted, rows.outreaches)
    await builder.outbox.add_rows(session, rows.events)
    return admitted, rows
