"""One outreach for one person (a resend's, a fallback's) in the caller's transaction, with the release's checks."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.outbox import Outbox
from plumbing.telemetry import HELD, hold_attributes, outreach_span
from services import streams
from services.campaigns import automation_store, store
from services.campaigns.audience import Exclusion
from services.campaigns.campaign_ids import format_campaign_id, month_code
from services.campaigns.content import CompiledContent, compile_content, contact_address, unavailable_reason
from services.campaigns.content_files import ContentLibrary
from services.campaigns.content_messages import dispatch_message
from services.campaigns.messages import (
    channel_order_of,
    content_templates_of,
    offer_of,
    offer_terms_of,
    outreach_proto,
    timestamp,
)
from services.campaigns.outreach_rows import RENDER_REASON_LENGTH, outreach_columns
from services.campaigns.rendering import RenderFailed
from services.campaigns.scheduling import DeliveryOptions, recipient_time_zone
from services.campaigns.segments_client import AudienceMember
from services.campaigns.selection import AudienceGate
from xsell.campaigns.v1 import events_pb2

log = structlog.get_logger(__name__)

RENDER_FAILED = "render_failed"


@dataclass(frozen=True)
class Made:
    """The outreach's campaign ID, or why there is none ("suppressed:opt_out", "capped:cap_all_day"...)."""

    campaign_id: str | None
    left_out: str | None = None
    dispatched: bool = False


class CompiledTemplates:
    """Each campaign version's content compiled once, for triggers and resends (templates cannot change after
    launch: an update makes a new version)."""

    def __init__(self, library: ContentLibrary) -> None:
        self.library = library
        self._compiled: dict[tuple[str, int], CompiledContent] = {}

    def of(self, campaign: Any) -> CompiledContent:
        key = (campaign.campaign_key, campaign.version)
        if key not in self._compiled:
            self._compiled[key] = compile_content(
                content_templates_of(campaign),
                channel_order_of(campaign),
                offer_has_amount=offer_terms_of(campaign).has_amount,
                registry=self.library.registry,
                check_registry=False,
            )
        return self._compiled[key]


class OutreachMaker:
    """Creates one outreach exactly as a release page would: the audience gate (suppressions, no contact,
    holdout, caps, the contact ledger), a campaign ID, the rendered content, OutreachCreated, and
    DispatchRequested at once or, inside the recipient's quiet hours, when they end."""

    def __init__(self, gate: AudienceGate, outbox: Outbox, tracer: trace.Tracer, templates: CompiledTemplates) -> None:
        self.gate = gate
        self.outbox = outbox
        self.tracer = tracer
        self.templates = templates
        self.library = templates.library

    async def make(
        self,
        session: AsyncSession,
        campaign: Any,
        run: Any,
        member: AudienceMember,
        now: datetime,
        *,
        resend_of: str | None = None,
        fallback_of: str | None = None,
        order: tuple[str, ...] | None = None,
    ) -> Made:
        """`order`: the channels to try, in order (a fallback's: those after the failed outreach's channel); the
        campaign's whole order by default."""
        compiled = self.templates.of(campaign)
        admitted = await self.gate.admit(
            session,
            campaign,
            run,
            [member],
            now,
            order=order if order is not None else compiled.order,
            available=lambda channel, m: unavailable_reason(channel, m.attributes) is None,
        )
        if not admitted.members:
            left_out = await automation_store.exclusion_of(session, run.run_id, member.profile_id)
            return Made(None, left_out or "left_out")
        channel = admitted.channels[member.profile_id]
        month = month_code(now, campaign.time_zone)
        await store.ensure_counter(session, campaign.programme, month, campaign.trigger_code)
        block = await store.allocate_sequences(session, campaign.programme, month, campaign.trigger_code, 1)
        campaign_id = format_campaign_id(campaign.programme, month, campaign.trigger_code, block.first)
        offer = admitted.offers.get(member.profile_id) or offer_of(campaign)
        options = DeliveryOptions.from_json(campaign.options)
        with outreach_span(
            self.tracer,
            "outreach.create",
            campaign_id,
            root=True,
            attributes={
                "campaign.key": campaign.campaign_key,
                "campaign.resend_of": resend_of or "",
                "campaign.fallback_of": fallback_of or "",
            },
            follows=fallback_of or resend_of or "",
        ) as span:
            try:
                rendered = compiled.render(
                    channel, compiled.context(member.attributes, campaign_id, offer, self.library.products)
                )
            except RenderFailed as failure:
                span.set_status(Status(StatusCode.ERROR, "render failed"))
                log.warning("outreach_render_skipped", profile_id=member.profile_id, reason=failure.reason)
                await automation_store.add_to_run(session, run.run_id, created=0, render_failed=1)
                # As at release: counted by the run's skipped_render, the row kept for ExplainOutreach.
                await store.insert_exclusions(
                    session,
                    [
                        {
                            "run_id": run.run_id,
                            "profile_id": member.profile_id,
                            "campaign_key": campaign.campaign_key,
                            "kind": Exclusion.RENDER_FAILED.value,
                            "reason": failure.reason[:RENDER_REASON_LENGTH],
                            "created_at": now,
                        }
                    ],
                )
                return Made(None, RENDER_FAILED)
            time_zone = recipient_time_zone(member.attributes.get("time_zone"), campaign.time_zone)
            row: dict[str, Any] = {
                **outreach_columns(campaign, run.run_id, offer, now),
                "campaign_id": campaign_id,
                "profile_id": member.profile_id,
                "channel": channel,
                "ordinal": run.outreach_count,
                "recipient_time_zone": time_zone,
                "resend_of": resend_of,
                "fallback_of": fallback_of,
            }
            events = [
                self.outbox.event(
                    streams.OUTREACH_CREATED,
                    events_pb2.OutreachCreated(outreach=outreach_proto(row)),
                    campaign_id=campaign_id,
                )
            ]
            dispatch = dispatch_message(
                campaign_id, member.profile_id, channel, rendered, contact_address(channel, member.attributes)
            )
            release_at = options.quiet_hours.release_time(now, time_zone) if options.quiet_hours else now
            if release_at > now:
                row["dispatch_after"] = release_at
                assert options.quiet_hours is not None
                span.add_event(HELD, hold_attributes(campaign_id, options.quiet_hours.describe(time_zone), release_at))
            else:
                dispatch.request_time.CopyFrom(timestamp(now))
                events.append(self.outbox.event(streams.DISPATCH_REQUESTED, dispatch, campaign_id=campaign_id))
                row["dispatched_at"] = now
            row["dispatch_payload"] = dispatch.SerializeToString()
        await store.insert_outreaches(session, [row])
        await self.gate.record_contacts(
            session, campaign, admitted, [(campaign_id, member.profile_id, channel)], now, store.DriverValues(session)
        )
        await self.outbox.add_rows(session, events)
        await automation_store.add_to_run(session, run.run_id, created=1, render_failed=0)
        await store.add_outreaches_to_campaign(session, campaign.campaign_key, 1)
        return Made(campaign_id, dispatched=release_at <= now)
