"""PreviewCampaign, TestSendCampaign and the content checks of Create / Update / Submit, mixed into CampaignsApi."""

from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import Database
from plumbing.errors import InvalidArgument
from plumbing.idempotency import Idempotency
from plumbing.ids import new_id
from plumbing.outbox import Outbox, utcnow
from plumbing.telemetry import outreach_span
from services import streams
from services.campaigns import store
from services.campaigns.campaign_ids import format_campaign_id, month_code
from services.campaigns.campaigns import CampaignSpec, unknown_campaign, validate_spec
from services.campaigns.content import (
    CHANNELS,
    E164,
    EMAIL_ATTRIBUTE,
    PHONE_ATTRIBUTE,
    PUSH_TOKEN_ATTRIBUTE,
    WHATSAPP_OPT_IN_ATTRIBUTE,
    CompiledContent,
    check_attributes,
    compile_content,
    contact_address,
    unavailable_reason,
)
from services.campaigns.content_files import ContentLibrary
from services.campaigns.content_messages import dispatch_message, rendered_proto
from services.campaigns.messages import (
    channel_name,
    channel_order_of,
    content_templates_of,
    offer_of,
    offer_proto,
    offer_terms_of,
    outreach_proto,
    spec_from_proto,
)
from services.campaigns.offers import NotEligible, check_catalog
from services.campaigns.outreach_rows import outreach_columns
from services.campaigns.profiles_client import ProfileDirectory
from services.campaigns.rendering import RenderFailed
from services.campaigns.scheduling import recipient_time_zone
from xsell.campaigns.v1 import resources_pb2, service_pb2

log = structlog.get_logger(__name__)

MAX_TEST_RECIPIENTS = 20
PREVIEW_SEQUENCE = "0000"
"""Previews render with sequence 0000 in the campaign ID, a number the counters never issue."""


@dataclass(frozen=True)
class ContentServices:
    """What the content RPCs need besides the database: segments' catalog and profiles, the files, an outbox."""

    profiles: ProfileDirectory
    library: ContentLibrary
    outbox: Outbox
    tracer: trace.Tracer


def _recipient_attributes(recipient: service_pb2.TestRecipient, index: int) -> dict[str, object]:
    """A test recipient's addresses as the contact attributes they stand in for; InvalidArgument names the bad one."""
    field = f"recipients[{index}]"
    attributes: dict[str, object] = {}
    if recipient.email_address:
        if "@" not in recipient.email_address:
            raise InvalidArgument("not an e-mail address, e.g. 'asha@example.in'", field=f"{field}.email_address")
        attributes[EMAIL_ATTRIBUTE] = recipient.email_address.strip()
    if recipient.phone_number:
        if not E164.match(recipient.phone_number.strip()):
            raise InvalidArgument("must be in E.164 form, e.g. '+919812345678'", field=f"{field}.phone_number")
        attributes[PHONE_ATTRIBUTE] = recipient.phone_number.strip()
        # People on a test list asked for the test message: they count as opted in to WhatsApp.
        attributes[WHATSAPP_OPT_IN_ATTRIBUTE] = True
    if recipient.device_token:
        attributes[PUSH_TOKEN_ATTRIBUTE] = recipient.device_token.strip()
    return attributes


class ContentApi:
    """The content half of CampaignsService; CampaignsApi provides db, idempotency, default_time_zone and content."""

    db: Database
    idempotency: Idempotency
    default_time_zone: str
    content: ContentServices

    async def validated_spec(self, campaign: resources_pb2.Campaign) -> CampaignSpec:
        """The spec with defaults, after every content check (templates, registry, attribute catalog)."""
        spec, _ = validate_spec(spec_from_proto(campaign), self.default_time_zone, self.content.library.registry)
        catalog = await self.content.profiles.attribute_types()
        check_attributes(spec.templates(), catalog)
        check_catalog(spec.offer, catalog)
        return spec

    async def check_before_submit(self, request: service_pb2.SubmitCampaignRequest) -> None:
        """Submit's content checks; a retried submit that already succeeded gets its first answer instead."""
        async with self.db.transaction() as session:
            previous = await self.idempotency.previous(
                session, "SubmitCampaign", request, service_pb2.SubmitCampaignResponse
            )
        if previous is None:
            await self.check_stored_content(request.campaign_key)

    async def check_stored_content(self, campaign_key: str) -> None:
        """Submit's checks: the stored content against today's registry and attribute catalog."""
        async with self.db.transaction() as session:
            row = await store.get_campaign(session, campaign_key)
        if row is None:
            raise unknown_campaign(campaign_key)
        templates, terms = content_templates_of(row), offer_terms_of(row)
        compile_content(
            templates,
            channel_order_of(row),
            offer_has_amount=terms.has_amount,
            registry=self.content.library.registry,
        )
        catalog = await self.content.profiles.attribute_types()
        check_attributes(templates, catalog)
        check_catalog(terms, catalog)

    def _compiled(self, row: Any, *, check_registry: bool) -> CompiledContent:
        templates = content_templates_of(row)
        return compile_content(
            templates,
            channel_order_of(row),
            offer_has_amount=offer_terms_of(row).has_amount,
            registry=self.content.library.registry,
            check_registry=check_registry,
        )

    async def _campaign(self, campaign_key: str) -> Any:
        async with self.db.transaction() as session:
            row = await store.get_campaign(session, campaign_key)
        if row is None:
            raise unknown_campaign(campaign_key)
        return row

    async def PreviewCampaign(
        self, request: service_pb2.PreviewCampaignRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.PreviewCampaignResponse:
        row = await self._campaign(request.campaign_key)
        # Unregistered templates still preview: their render_error says so.
        compiled = self._compiled(row, check_registry=False)
        if request.channel:
            channel = channel_name(request.channel)
            if channel not in compiled.channels:
                raise InvalidArgument(
                    f"campaign {row.campaign_key} has no content for CHANNEL_{channel}; preview one of "
                    + ", ".join(f"CHANNEL_{name}" for name in compiled.channels),
                    field="channel",
                )
            channels = [channel]
        else:
            channels = [name for name in CHANNELS if name in compiled.channels]
        attributes = await self.content.profiles.attributes_of(request.profile_id)
        now = utcnow()
        # Sequence 0000: a preview's campaign ID looks real but is one the counters never issue.
        campaign_id = f"{row.programme}-{month_code(now, row.time_zone)}-{row.trigger_code}-{PREVIEW_SEQUENCE}"
        # The profile's own offer; one it is not eligible for still previews, with the product only, and says why.
        decided = offer_terms_of(row).decide(attributes)
        response = service_pb2.PreviewCampaignResponse()
        if isinstance(decided, NotEligible):
            response.not_eligible_reason = decided.detail
            offer = offer_of(row)
        else:
            offer = decided
        response.offer.CopyFrom(offer_proto(offer))
        context_values = compiled.context(attributes, campaign_id, offer, self.content.library.products)
        for channel in channels:
            reason = unavailable_reason(channel, attributes) or ""
            try:
                rendered = compiled.render(channel, context_values)
            except RenderFailed as failure:
                response.previews.append(
                    rendered_proto(channel, None, unavailable_reason=reason, render_error=failure.reason)
                )
                continue
            response.previews.append(rendered_proto(channel, rendered, unavailable_reason=reason))
        log.info(
            "campaign_previewed",
            campaign_key=row.campaign_key,
            channels=len(channels),
            product_catalog_version=self.content.library.products.version,
        )
        return response

    async def TestSendCampaign(
        self, request: service_pb2.TestSendCampaignRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.TestSendCampaignResponse:
        method = "TestSendCampaign"
        async with self.db.transaction() as session:
            previous = await self.idempotency.previous(session, method, request, service_pb2.TestSendCampaignResponse)
        if previous is not None:
            return previous
        if not request.recipients:
            raise InvalidArgument("recipients is required: at least one test address", field="recipients")
        if len(request.recipients) > MAX_TEST_RECIPIENTS:
            raise InvalidArgument(
                f"recipients has {len(request.recipients)} entries; a test list has at most {MAX_TEST_RECIPIENTS}",
                field="recipients",
            )
        row = await self._campaign(request.campaign_key)
        # A test send must be sendable: unregistered SMS / WhatsApp templates are refused here too.
        compiled = self._compiled(row, check_registry=True)
        profile = await self.content.profiles.attributes_of(request.profile_id)
        plans: list[tuple[str, dict[str, object]]] = []
        for index, recipient in enumerate(request.recipients):
            addresses = _recipient_attributes(recipient, index)
            # The profile personalises; the recipient's addresses replace the profile's contacts.
            attributes = {
                name: value
                for name, value in profile.items()
                if name not in (EMAIL_ATTRIBUTE, PHONE_ATTRIBUTE, PUSH_TOKEN_ATTRIBUTE, WHATSAPP_OPT_IN_ATTRIBUTE)
            }
            attributes.update(addresses)
            channel = compiled.choose_channel(attributes)
            if channel is None:
                wanted = ", ".join(f"CHANNEL_{name}" for name in compiled.order)
                raise InvalidArgument(
                    f"recipients[{index}] has no address for the campaign's channels ({wanted}): give an "
                    "email_address for e-mail, a phone_number for SMS / WhatsApp, a device_token for push",
                    field=f"recipients[{index}]",
                )
            plans.append((channel, attributes))
        decided = offer_terms_of(row).decide(profile)
        if isinstance(decided, NotEligible):
            # Only the attribute's name: the profile's values stay out of errors (and so out of logs).
            raise InvalidArgument(
                f"profile_id {request.profile_id!r} is not eligible for the campaign's offer ({decided.reason}); pick "
                "a test profile that meets the offer's eligibility and amount rule (PreviewCampaign says why)",
                field="profile_id",
            )
        offer = decided

        async def send(session: AsyncSession) -> service_pb2.TestSendCampaignResponse:
            now = utcnow()
            month = month_code(now, row.time_zone)
            await store.ensure_counter(session, row.programme, month, row.trigger_code)
            block = await store.allocate_sequences(session, row.programme, month, row.trigger_code, len(plans))
            rows: list[dict[str, Any]] = []
            events: list[dict[str, Any]] = []
            for (channel, attributes), sequence in zip(plans, block.numbers(), strict=True):
                campaign_id = format_campaign_id(row.programme, month, row.trigger_code, sequence)
                with outreach_span(
                    self.content.tracer,
                    "outreach.test_send",
                    campaign_id,
                    root=True,
                    attributes={"campaign.key": row.campaign_key, "outreach.test": True},
                ):
                    try:
                        rendered = compiled.render(
                            channel, compiled.context(attributes, campaign_id, offer, self.content.library.products)
                        )
                    except RenderFailed as failure:
                        raise InvalidArgument(
                            f"profile_id {request.profile_id!r}: the {channel.lower()} content cannot be rendered for "
                            f"this profile ({failure.reason}); pick a profile that has the attributes the templates "
                            "use, or fix the templates (PreviewCampaign shows each channel)",
                            field="profile_id",
                        ) from failure
                    message = dispatch_message(
                        campaign_id,
                        request.profile_id,
                        channel,
                        rendered,
                        contact_address(channel, attributes),
                        test=True,
                    )
                    message.request_time.FromDatetime(now)
                    # Only DispatchRequested: attribution never hears of a test send (no OutreachCreated).
                    events.append(
                        self.content.outbox.event(streams.DISPATCH_REQUESTED, message, campaign_id=campaign_id)
                    )
                rows.append(
                    {
                        # A run of its own per test outreach: the (run, profile) key allows one per person per run.
                        **outreach_columns(row, new_id("test_"), offer, now),
                        "campaign_id": campaign_id,
                        "profile_id": request.profile_id,
                        "channel": channel,
                        "test": True,
                        "dispatch_payload": message.SerializeToString(),
                        "dispatched_at": now,
                        "recipient_time_zone": recipient_time_zone(attributes.get("time_zone"), row.time_zone),
                    }
                )
            await store.insert_outreaches(session, rows)
            await self.content.outbox.add_rows(session, events)
            log.info("campaign_test_sent", campaign_key=row.campaign_key, outreaches=len(rows))
            return service_pb2.TestSendCampaignResponse(outreaches=[outreach_proto(values) for values in rows])

        return await self.idempotency.run_once(self.db, method, request, service_pb2.TestSendCampaignResponse, send)
