"""Conversions between the campaigns tables, the domain, and the xsell.campaigns.v1 messages."""

import functools
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from plumbing.errors import InvalidArgument, enum_name
from plumbing.times import duration_of, utc_time
from services.campaigns.automation import automation_of, fill_automation
from services.campaigns.campaigns import CampaignSpec, CampaignState
from services.campaigns.content import (
    ContentTemplates,
    PushTemplates,
    SmsTemplates,
    WebhookTemplates,
    WhatsAppTemplates,
)
from services.campaigns.offers import AmountRule, Condition, OfferTerms, terms_from_proto
from services.campaigns.rendering import EmailTemplates, Money, Offer
from services.campaigns.scheduling import (
    DeliveryOptions,
    FrequencyCapRule,
    QuietHours,
    Recurrence,
    parse_hh_mm,
    recurrence_cron,
    validate_distribution,
    validate_holdout,
    validate_rates,
)
from xsell.campaigns.v1 import resources_pb2
from xsell.segments.v1 import resources_pb2 as segment_resources
from xsell.type.v1 import channel_pb2, money_pb2


def timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def channel_name(channel: int) -> str:
    """ "EMAIL" for CHANNEL_EMAIL; "UNSPECIFIED" for unknown numbers too."""
    try:
        return channel_pb2.Channel.Name(channel).removeprefix("CHANNEL_")  # type: ignore[arg-type]
    except ValueError:
        return "UNSPECIFIED"


@functools.cache
def channel_value(name: str) -> int:
    """Remembered: a release asks it once or twice per outreach for a handful of channel names."""
    return channel_pb2.Channel.Value(f"CHANNEL_{name}")


def state_value(state: str) -> int:
    return resources_pb2.CampaignState.Value(f"CAMPAIGN_STATE_{CampaignState(state).value}")


def _hh_mm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


MAX_STEP_INTERVAL = timedelta(days=30)
"""The longest a staggered release may wait between its steps."""


def options_from_proto(campaign: resources_pb2.Campaign) -> DeliveryOptions:
    """The delivery options of a campaign message; InvalidArgument names the first bad field."""
    recurrence = None
    if campaign.schedule.HasField("recurrence"):
        given = campaign.schedule.recurrence
        frequency = enum_name(
            resources_pb2.RecurrenceFrequency, given.frequency, "campaign.schedule.recurrence.frequency"
        ).removeprefix("RECURRENCE_FREQUENCY_")
        cron = recurrence_cron(
            "" if frequency == "UNSPECIFIED" else frequency,
            given.time_of_day,
            given.day_of_week,
            given.day_of_month,
            given.cron.strip(),
            "campaign.schedule.recurrence",
        )
        end = utc_time(given.end_time, "campaign.schedule.recurrence.end_time") if given.HasField("end_time") else None
        recurrence = Recurrence(cron, end)
    interval = duration_of(campaign.distribution.interval, "campaign.distribution.interval", at_most=MAX_STEP_INTERVAL)
    distribution = validate_distribution(campaign.distribution.percent_per_step, int(interval.total_seconds()))
    quiet_hours = None
    if campaign.HasField("quiet_hours"):
        quiet_hours = QuietHours(
            parse_hh_mm(campaign.quiet_hours.start, "campaign.quiet_hours.start"),
            parse_hh_mm(campaign.quiet_hours.end, "campaign.quiet_hours.end"),
        )
    auto_pause = None
    if campaign.HasField("auto_pause"):
        rules = campaign.auto_pause
        auto_pause = validate_rates(
            rules.max_bounce_rate,
            rules.max_complaint_rate,
            rules.max_opt_out_rate,
            rules.min_released,
            rules.max_failure_rate,
        )
    caps = []
    for index, cap in enumerate(campaign.frequency_caps):
        scope = enum_name(resources_pb2.CapScope, cap.scope, f"campaign.frequency_caps[{index}].scope")
        period = enum_name(resources_pb2.CapPeriod, cap.period, f"campaign.frequency_caps[{index}].period")
        scope, period = scope.removeprefix("CAP_SCOPE_"), period.removeprefix("CAP_PERIOD_")
        if scope == "UNSPECIFIED" or period == "UNSPECIFIED" or cap.max_outreaches < 1:
            raise InvalidArgument(
                f"frequency_caps[{index}] needs a scope (ALL, CHANNEL or CATEGORY), a period (DAY or WEEK) and "
                "max_outreaches of at least 1",
                field=f"campaign.frequency_caps[{index}]",
            )
        caps.append(FrequencyCapRule(scope, period, cap.max_outreaches))
    return DeliveryOptions(
        recurrence=recurrence,
        distribution=distribution,
        quiet_hours=quiet_hours,
        auto_pause=auto_pause,
        frequency_caps=tuple(caps),
        priority=campaign.priority,
        holdout_basis_points=validate_holdout(campaign.holdout_basis_points),
    )


def fill_options(campaign: resources_pb2.Campaign, options: DeliveryOptions) -> None:
    """Writes the stored options back onto a campaign message."""
    if options.recurrence is not None:
        campaign.schedule.recurrence.cron = options.recurrence.cron
        if options.recurrence.end is not None:
            campaign.schedule.recurrence.end_time.CopyFrom(timestamp(options.recurrence.end))
    if options.distribution.percent_per_step < 100:
        campaign.distribution.percent_per_step = options.distribution.percent_per_step
        campaign.distribution.interval.FromTimedelta(timedelta(seconds=options.distribution.interval_seconds))
    if options.quiet_hours is not None:
        campaign.quiet_hours.start = _hh_mm(options.quiet_hours.start_minute)
        campaign.quiet_hours.end = _hh_mm(options.quiet_hours.end_minute)
    if options.auto_pause is not None:
        rules = options.auto_pause
        campaign.auto_pause.CopyFrom(
            resources_pb2.AutoPause(
                max_bounce_rate=rules.max_bounce_rate,
                max_complaint_rate=rules.max_complaint_rate,
                max_opt_out_rate=rules.max_opt_out_rate,
                min_released=rules.min_released,
                max_failure_rate=rules.max_failure_rate,
            )
        )
    for cap in options.frequency_caps:
        campaign.frequency_caps.add(
            scope=resources_pb2.CapScope.Value(f"CAP_SCOPE_{cap.scope}"),  # type: ignore[arg-type]
            period=resources_pb2.CapPeriod.Value(f"CAP_PERIOD_{cap.period}"),  # type: ignore[arg-type]
            max_outreaches=cap.max_outreaches,
        )
    campaign.priority = options.priority
    campaign.holdout_basis_points = options.holdout_basis_points


def spec_from_proto(campaign: resources_pb2.Campaign) -> CampaignSpec:
    """The marketer's spec; InvalidArgument when the offer's amount rule or eligibility is malformed."""
    email = None
    content = campaign.content
    if content.HasField("email"):
        email = EmailTemplates(
            content.email.subject_template,
            content.email.html_template,
            content.email.text_template,
            content.email.from_name,
        )
    send_time = (
        utc_time(campaign.schedule.send_time, "campaign.schedule.send_time")
        if campaign.schedule.HasField("send_time")
        else None
    )
    return CampaignSpec(
        display_name=campaign.display_name,
        labels=tuple(campaign.labels),
        category=campaign.category,
        programme=campaign.programme,
        trigger_code=campaign.trigger_code,
        segment_id=campaign.segment_id,
        channel=channel_name(campaign.channel),
        offer=terms_from_proto(campaign.offer),
        email=email,
        send_time=send_time,
        time_zone=campaign.schedule.time_zone,
        options=options_from_proto(campaign),
        sms=(
            SmsTemplates(content.sms.dlt_template_id, content.sms.sender_id, content.sms.body_template)
            if content.HasField("sms")
            else None
        ),
        whatsapp=(
            WhatsAppTemplates(
                content.whatsapp.template_name,
                content.whatsapp.language_code,
                tuple(content.whatsapp.parameter_templates),
            )
            if content.HasField("whatsapp")
            else None
        ),
        push=(
            PushTemplates(content.push.title_template, content.push.body_template, content.push.deep_link_template)
            if content.HasField("push")
            else None
        ),
        webhook=(
            WebhookTemplates(content.webhook.url, content.webhook.payload_template)
            if content.HasField("webhook")
            else None
        ),
        fallback_channels=tuple(channel_name(channel) for channel in campaign.fallback_channels),
    )


def campaign_values(spec: CampaignSpec) -> dict[str, Any]:
    """The columns of the campaigns table that come from the spec (a campaign without e-mail stores "" there)."""
    email = spec.email or EmailTemplates("", "", "", "")
    return {
        "display_name": spec.display_name,
        "labels": list(spec.labels),
        "category": spec.category,
        "programme": spec.programme,
        "trigger_code": spec.trigger_code,
        "segment_id": spec.segment_id,
        "channel": spec.channel,
        "offer_product_code": spec.offer.product_code,
        "offer_amount_minor": spec.offer.amount.minor_units if spec.offer.amount else None,
        "offer_currency": spec.offer.amount.currency_code if spec.offer.amount else None,
        "offer_rules": offer_rules_json(spec.offer),
        "subject_template": email.subject_template,
        "html_template": email.html_template,
        "text_template": email.text_template,
        "from_name": email.from_name,
        "channel_content": spec.templates().other_channels_json(),
        "fallback_channels": list(spec.fallback_channels),
        "send_time": spec.send_time,
        "time_zone": spec.time_zone,
        "options": spec.options.to_json(),
    }


def offer_of(row: Any) -> Offer:
    """The offer every outreach of the campaign shares: the product and, when fixed, the amount."""
    amount = None if row.offer_amount_minor is None else Money(row.offer_amount_minor, row.offer_currency or "INR")
    return Offer(row.offer_product_code, amount)


def _money_proto(money: Money) -> money_pb2.Money:
    return money_pb2.Money(minor_units=money.minor_units, currency_code=money.currency_code)


def _value_proto(value: object) -> segment_resources.Value:
    """An operand as segments' Value (the inverse of segments_client.attribute_value)."""
    if isinstance(value, bool):
        return segment_resources.Value(bool_value=value)
    if isinstance(value, str):
        return segment_resources.Value(string_value=value)
    if isinstance(value, float):
        return segment_resources.Value(number_value=value)
    if isinstance(value, frozenset):
        return segment_resources.Value(string_set_value=segment_resources.StringSet(values=sorted(value)))
    if isinstance(value, datetime):
        return segment_resources.Value(timestamp_value=timestamp(value))
    assert isinstance(value, Money), value
    return segment_resources.Value(money_value=_money_proto(value))


def offer_terms_proto(terms: OfferTerms) -> resources_pb2.Offer:
    offer = resources_pb2.Offer(product_code=terms.product_code)
    if terms.amount is not None:
        offer.amount.CopyFrom(_money_proto(terms.amount))
    rule: AmountRule | None = terms.amount_rule
    if rule is not None:
        offer.amount_rule.attribute = rule.attribute
        offer.amount_rule.share_basis_points = rule.share_basis_points
        for name in ("maximum", "minimum", "round_down_to"):
            bound = getattr(rule, name)
            if bound is not None:
                getattr(offer.amount_rule, name).CopyFrom(_money_proto(bound))
    condition: Condition
    for condition in terms.eligibility:
        offer.eligibility.add(
            attribute=condition.attribute,
            operator=segment_resources.Operator.Value(f"OPERATOR_{condition.operator}"),  # type: ignore[arg-type]
            values=[_value_proto(operand) for operand in condition.operands],
        )
    return offer


def offer_rules_json(terms: OfferTerms) -> dict[str, Any] | None:
    """The offer_rules column: the amount rule and eligibility as the proto's JSON, None when there are neither."""
    if not terms.per_person:
        return None
    offer = offer_terms_proto(terms)
    offer.ClearField("product_code")
    offer.ClearField("amount")
    return json_format.MessageToDict(offer)


def offer_terms_of(row: Any) -> OfferTerms:
    """The campaign's offer terms from its row (the stored rules were validated when the campaign was saved)."""
    rules = getattr(row, "offer_rules", None)
    if not rules:
        amount = None if row.offer_amount_minor is None else Money(row.offer_amount_minor, row.offer_currency or "INR")
        return OfferTerms(row.offer_product_code, amount)
    offer = json_format.ParseDict(rules, resources_pb2.Offer())
    offer.product_code = row.offer_product_code
    if row.offer_amount_minor is not None:
        offer.amount.CopyFrom(_money_proto(Money(row.offer_amount_minor, row.offer_currency or "INR")))
    return terms_from_proto(offer)


def email_templates_of(row: Any) -> EmailTemplates:
    return EmailTemplates(row.subject_template, row.html_template, row.text_template, row.from_name)


def content_templates_of(row: Any) -> ContentTemplates:
    """Every channel's stored content; e-mail only when its templates were given."""
    email = email_templates_of(row) if row.html_template else None
    return ContentTemplates.from_stored(email, row.channel_content)


def channel_order_of(row: Any) -> tuple[str, ...]:
    """The campaign's channel, then its fallback channels, by name."""
    return (row.channel, *(row.fallback_channels or ()))


def content_proto(templates: ContentTemplates) -> resources_pb2.Content:
    content = resources_pb2.Content()
    if templates.email is not None:
        content.email.CopyFrom(
            resources_pb2.EmailContent(
                subject_template=templates.email.subject_template,
                html_template=templates.email.html_template,
                text_template=templates.email.text_template,
                from_name=templates.email.from_name,
            )
        )
    if templates.sms is not None:
        content.sms.CopyFrom(
            resources_pb2.SmsContent(
                dlt_template_id=templates.sms.dlt_template_id,
                sender_id=templates.sms.sender_id,
                body_template=templates.sms.body_template,
            )
        )
    if templates.whatsapp is not None:
        content.whatsapp.CopyFrom(
            resources_pb2.WhatsAppContent(
                template_name=templates.whatsapp.template_name,
                language_code=templates.whatsapp.language_code,
                parameter_templates=list(templates.whatsapp.parameter_templates),
            )
        )
    if templates.push is not None:
        content.push.CopyFrom(
            resources_pb2.PushContent(
                title_template=templates.push.title_template,
                body_template=templates.push.body_template,
                deep_link_template=templates.push.deep_link_template,
            )
        )
    if templates.webhook is not None:
        content.webhook.CopyFrom(
            resources_pb2.WebhookContent(url=templates.webhook.url, payload_template=templates.webhook.payload_template)
        )
    return content


def offer_proto(offer: Offer) -> resources_pb2.Offer:
    message = resources_pb2.Offer(product_code=offer.product_code)
    if offer.amount is not None:
        message.amount.CopyFrom(
            money_pb2.Money(minor_units=offer.amount.minor_units, currency_code=offer.amount.currency_code)
        )
    return message


def campaign_proto(row: Any) -> resources_pb2.Campaign:
    campaign = resources_pb2.Campaign(
        campaign_key=row.campaign_key,
        display_name=row.display_name,
        labels=list(row.labels),
        category=row.category,  # type: ignore[arg-type]
        programme=row.programme,
        trigger_code=row.trigger_code,
        segment_id=row.segment_id,
        segment_version=row.segment_version,
        channel=channel_value(row.channel),  # type: ignore[arg-type]
        offer=offer_terms_proto(offer_terms_of(row)),
        content=content_proto(content_templates_of(row)),
        fallback_channels=[channel_value(name) for name in row.fallback_channels or ()],  # type: ignore[misc]
        schedule=resources_pb2.Schedule(time_zone=row.time_zone),
        state=state_value(row.state),  # type: ignore[arg-type]
        outreach_count=row.outreach_count,
        create_time=timestamp(row.created_at),
        version=row.version,
        author=row.author,
        approver=row.approver or "",
        pause_reason=row.pause_reason or "",
    )
    if row.send_time is not None:
        campaign.schedule.send_time.CopyFrom(timestamp(row.send_time))
    if row.launched_at is not None:
        campaign.launch_time.CopyFrom(timestamp(row.launched_at))
    fill_options(campaign, DeliveryOptions.from_json(row.options))
    fill_automation(campaign, automation_of(row))
    return campaign


def outreach_proto(row: Any) -> resources_pb2.Outreach:
    """From an outreaches row, or the dict about to be inserted as one."""
    values: dict[str, Any] = row if isinstance(row, dict) else dict(row._mapping)
    amount = values["offer_amount_minor"]
    money = None if amount is None else Money(amount, values["offer_currency"] or "INR")
    return resources_pb2.Outreach(
        campaign_id=values["campaign_id"],
        campaign_key=values["campaign_key"],
        profile_id=values["profile_id"],
        channel=channel_value(values["channel"]),  # type: ignore[arg-type]
        trigger_code=values["trigger_code"],
        offer=offer_proto(Offer(values["offer_product_code"], money)),
        labels=list(values["labels"]),
        category=values["category"],
        create_time=timestamp(values["created_at"]),
        test=bool(values.get("test", False)),
        run_id=values["run_id"],
        resend_of=values.get("resend_of") or "",
        fallback_of=values.get("fallback_of") or "",
    )


def audit_proto(row: Any) -> resources_pb2.CampaignAuditEntry:
    return resources_pb2.CampaignAuditEntry(
        campaign_key=row.campaign_key,
        version=row.version,
        action=row.action,
        actor=row.actor,
        time=timestamp(row.created_at),
        state=state_value(row.state),  # type: ignore[arg-type]
        note=row.note,
    )
