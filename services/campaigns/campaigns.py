"""Campaign definitions: what makes one valid, and what launching one does to its lifecycle."""

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from plumbing.errors import PRECONDITION_REFERENCE, DomainError, FailedPrecondition, InvalidArgument, NotFound
from services.campaigns.campaign_ids import month_code, normalise_programme, normalise_trigger_code
from services.campaigns.content import (
    CompiledContent,
    ContentTemplates,
    PushTemplates,
    SmsTemplates,
    TemplateRegistry,
    WebhookTemplates,
    WhatsAppTemplates,
    channel_order,
    compile_content,
)
from services.campaigns.offers import OfferTerms
from services.campaigns.rendering import EmailTemplates
from services.campaigns.scheduling import DeliveryOptions, Recurrence, next_occurrence

MAX_DISPLAY_NAME = 200
MAX_PRODUCT_CODE = 100
"""As long as a product code may be where it is stored: campaigns' offer and attribution's outreach columns."""
MAX_LABEL = 200
MAX_LABELS_TOTAL = 900
"""The most characters a campaign's distinct labels may hold together, one separator each: attribution keeps them as
one searchable value of at most 1,000, and an outreach whose labels did not fit was dead-lettered on PostgreSQL."""


def unknown_campaign(campaign_key: str) -> DomainError:
    """Why no campaign has `campaign_key`: none was given (INVALID_ARGUMENT), or none has it (NOT_FOUND)."""
    if not campaign_key:
        return InvalidArgument(
            "campaign_key is required: the key CreateCampaign answered, e.g. cmp_01J9Z6V5Q2 (ListCampaigns lists them)",
            field="campaign_key",
        )
    return NotFound(
        f"campaign {campaign_key!r} does not exist; use the key CreateCampaign answered (ListCampaigns lists them)",
        field="campaign_key",
    )


class CampaignState(StrEnum):
    """The lifecycle of a campaign definition, stored by name."""

    DRAFT = "DRAFT"
    SUBMITTED = "SUBMITTED"
    APPROVED = "APPROVED"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class CampaignSpec:
    """What the marketer asks for; `channel` is the channel's name without prefix, e.g. "EMAIL"."""

    display_name: str
    labels: tuple[str, ...]
    category: int
    programme: str
    trigger_code: str
    segment_id: str
    channel: str
    offer: OfferTerms
    email: EmailTemplates | None
    send_time: datetime | None
    time_zone: str
    options: DeliveryOptions = field(default_factory=DeliveryOptions)
    sms: SmsTemplates | None = None
    whatsapp: WhatsAppTemplates | None = None
    push: PushTemplates | None = None
    webhook: WebhookTemplates | None = None
    # Channel names tried in order when the person cannot be reached on `channel`.
    fallback_channels: tuple[str, ...] = ()

    def templates(self) -> ContentTemplates:
        return ContentTemplates(self.email, self.sms, self.whatsapp, self.push, self.webhook)


def validate_time_zone(time_zone: str, default_time_zone: str) -> str:
    name = time_zone or default_time_zone
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as error:  # OSError: a name too long for a file name
        raise InvalidArgument(
            f"time_zone {name[:100]!r} is not an IANA time zone; use a name such as 'Asia/Kolkata' or 'Asia/Dubai'",
            field="campaign.schedule.time_zone",
        ) from error
    return name


def validate_spec(
    spec: CampaignSpec, default_time_zone: str, registry: TemplateRegistry | None = None
) -> tuple[CampaignSpec, CompiledContent]:
    """The spec with its defaults filled in, and its compiled content; InvalidArgument on the first problem.

    SMS and WhatsApp content must name templates of `registry` (none are registered when it is None).
    """
    display_name = spec.display_name.strip()
    if not display_name:
        raise InvalidArgument(
            "display_name is required, e.g. 'Lumpsum for SIP investors'", field="campaign.display_name"
        )
    if len(display_name) > MAX_DISPLAY_NAME:
        raise InvalidArgument(
            f"display_name must be at most {MAX_DISPLAY_NAME} characters", field="campaign.display_name"
        )
    if any(not label.strip() for label in spec.labels):
        raise InvalidArgument("labels must not be empty strings", field="campaign.labels")
    for index, label in enumerate(spec.labels):
        if len(label) > MAX_LABEL or any(ord(char) < 0x20 or ord(char) == 0x7F for char in label):
            raise InvalidArgument(
                f"labels[{index}] must be at most {MAX_LABEL} characters, without control characters",
                field=f"campaign.labels[{index}]",
            )
    if sum(len(label) + 1 for label in set(spec.labels)) > MAX_LABELS_TOTAL:
        raise InvalidArgument(
            f"labels must hold at most {MAX_LABELS_TOTAL} characters together, counting one more for each label; use "
            "fewer or shorter labels",
            field="campaign.labels",
        )
    programme = normalise_programme(spec.programme)
    trigger_code = normalise_trigger_code(spec.trigger_code)
    if not spec.segment_id:
        raise InvalidArgument(
            "segment_id is required: the published segment whose members the campaign reaches",
            field="campaign.segment_id",
        )
    order = channel_order(spec.channel, spec.fallback_channels)
    if not spec.offer.product_code:
        raise InvalidArgument(
            "offer.product_code is required, e.g. 'LUMPSUM' or 'MSME_WC_TOPUP'", field="campaign.offer.product_code"
        )
    if len(spec.offer.product_code) > MAX_PRODUCT_CODE or not spec.offer.product_code.isprintable():
        # Longer was INTERNAL on PostgreSQL (the offer's column), and dead-lettered each outreach in attribution.
        raise InvalidArgument(
            f"offer.product_code must be at most {MAX_PRODUCT_CODE} printable characters, e.g. 'MSME_WC_TOPUP'",
            field="campaign.offer.product_code",
        )
    if spec.offer.amount is not None and (
        len(spec.offer.amount.currency_code) != 3 or not spec.offer.amount.currency_code.isupper()
    ):
        raise InvalidArgument(
            "offer.amount.currency_code must be an ISO 4217 code such as 'INR'",
            field="campaign.offer.amount.currency_code",
        )
    compiled = compile_content(
        spec.templates(),
        order,
        offer_has_amount=spec.offer.has_amount,
        registry=registry or TemplateRegistry(),
    )
    time_zone = validate_time_zone(spec.time_zone, default_time_zone)
    normalised = replace(
        spec,
        display_name=display_name,
        programme=programme,
        trigger_code=trigger_code,
        time_zone=time_zone,
    )
    return normalised, compiled


def require_published(segment_id: str, segment_state: str) -> None:
    """Campaigns target published segments only: their members are precomputed and kept current."""
    if segment_state != "PUBLISHED":
        raise FailedPrecondition(
            f"segment {segment_id} is {segment_state}; publish it before targeting it",
            field="campaign.segment_id",
            subject=f"segments/{segment_id}",
            kind=PRECONDITION_REFERENCE,
        )


@dataclass(frozen=True)
class LaunchPlan:
    """What launching a draft does: its next state, when its run is due, and the month of its campaign IDs."""

    state: CampaignState
    due_at: datetime
    month: str


def plan_launch(
    send_time: datetime | None, time_zone: str, now: datetime, recurrence: Recurrence | None = None
) -> LaunchPlan:
    """A future send time makes the campaign SCHEDULED until its run is due (lifecycle decides who may launch).

    The month of the campaign IDs is that of the launch, read in the campaign's time zone; for a
    campaign scheduled into a later month it is the month of the send time, when its outreaches
    are actually created.
    """
    if recurrence is not None:
        # The first occurrence at or after the send time (or now): a recurring campaign always waits for it.
        start = max(send_time or now, now) - timedelta(microseconds=1)
        first = next_occurrence(recurrence, time_zone, start)
        if first is None:
            raise FailedPrecondition(
                "the recurrence has no occurrence left before its end_time; move end_time later",
                field="campaign.schedule.recurrence.end_time",
            )
        return LaunchPlan(CampaignState.SCHEDULED, first, month_code(first, time_zone))
    if send_time is not None and send_time > now:
        return LaunchPlan(CampaignState.SCHEDULED, send_time, month_code(send_time, time_zone))
    return LaunchPlan(CampaignState.RUNNING, now, month_code(now, time_zone))
