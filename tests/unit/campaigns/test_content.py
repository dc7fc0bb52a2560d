"""Campaign content: template validation errors, the render context, and per-person render failures."""

from datetime import UTC, datetime

import pytest

from plumbing.errors import FailedPrecondition, InvalidArgument
from services.campaigns.campaigns import CampaignSpec, CampaignState, plan_launch, require_published, validate_spec
from services.campaigns.offers import OfferTerms
from services.campaigns.rendering import (
    UNSUBSCRIBE_URL,
    EmailTemplates,
    Money,
    Offer,
    RenderFailed,
    build_context,
    compile_email,
    render_email,
)

HTML = '<p>Hi {{ first_name }}, {{ offer_amount }} for {{ city }}.</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>'


def templates(**overrides: str) -> EmailTemplates:
    values = {
        "subject_template": "{{ first_name }}, your {{ offer.product_code }} offer",
        "html_template": HTML,
        "text_template": "Hi {{ first_name }} ({{ campaign_id }})",
        "from_name": "Fundsy",
    }
    values.update(overrides)
    return EmailTemplates(**values)


def spec(**overrides: object) -> CampaignSpec:
    values: dict[str, object] = {
        "display_name": "Lumpsum for SIP investors",
        "labels": ("Cross-Sell – Lumpsum",),
        "category": 1,
        "programme": "",
        "trigger_code": "",
        "segment_id": "seg_1",
        "channel": "EMAIL",
        "offer": OfferTerms("LUMPSUM", Money(17_40_000_00, "INR")),
        "email": templates(),
        "send_time": None,
        "time_zone": "",
    }
    values.update(overrides)
    return CampaignSpec(**values)  # type: ignore[arg-type]


def test_syntax_error_names_the_field_and_the_line() -> None:
    with pytest.raises(InvalidArgument) as error:
        compile_email(templates(html_template="<p>\n{{ unsubscribe_url }}\n{% if x %}no end"), offer_has_amount=True)
    assert error.value.field == "campaign.content.email.html_template"
    assert "line 3" in error.value.message


def test_syntax_error_in_the_subject_names_the_subject() -> None:
    with pytest.raises(InvalidArgument) as error:
        compile_email(templates(subject_template="{{ first_name "), offer_has_amount=True)
    assert error.value.field == "campaign.content.email.subject_template"
    assert "line 1" in error.value.message


def test_missing_unsubscribe_link_is_refused_with_the_reason() -> None:
    with pytest.raises(InvalidArgument) as error:
        compile_email(templates(html_template="<p>Buy now</p>"), offer_has_amount=True)
    assert error.value.field == "campaign.content.email.html_template"
    assert "{{ unsubscribe_url }}" in error.value.message
    assert "unsubscribe link" in error.value.message


def test_unsubscribe_placeholder_may_use_whitespace_control() -> None:
    compile_email(templates(html_template="<a href='{{-unsubscribe_url-}}'>x</a>"), offer_has_amount=True)


def test_offer_amount_needs_an_offer_amount() -> None:
    with pytest.raises(InvalidArgument) as error:
        compile_email(templates(), offer_has_amount=False)
    assert error.value.field == "campaign.offer.amount"


def test_attributes_to_fetch_are_those_referenced_plus_email_and_first_name() -> None:
    compiled = compile_email(
        templates(text_template="{% for f in funds_held %}{{ f }}{% endfor %} {{ range(2)|list }} {{ total_aum }}"),
        offer_has_amount=True,
    )
    assert compiled.attribute_names() == ["city", "email", "first_name", "funds_held", "time_zone", "total_aum"]


def test_render_uses_attributes_offer_and_the_unsubscribe_pseudo_url() -> None:
    compiled = compile_email(
        templates(text_template="{{ funds_held|join(',') }} {{ total_aum }} {{ schemes }} {{ offer_amount_full }}"),
        offer_has_amount=True,
    )
    context = build_context(
        {
            "first_name": "Asha",
            "city": "Pune <b>",
            "funds_held": frozenset({"SMALL_CAP", "ELSS"}),
            "total_aum": Money(12_50_000_00, "INR"),
            "schemes": 3.0,
        },
        "CSELL-NOV-T00-0001",
        Offer("LUMPSUM", Money(17_40_000_00, "INR")),
    )
    email = render_email(compiled, context)
    assert email.subject == "Asha, your LUMPSUM offer"
    assert "₹17.4 lakh for Pune &lt;b&gt;" in email.html_body
    assert f'href="{UNSUBSCRIBE_URL}"' in email.html_body
    assert email.text_body == "ELSS,SMALL_CAP ₹12,50,000 3 ₹17,40,000"
    assert email.from_name == "Fundsy"


def test_a_missing_variable_fails_that_person_only_without_their_data() -> None:
    compiled = compile_email(templates(), offer_has_amount=True)
    context = build_context({"first_name": "Asha"}, "CSELL-NOV-T00-0001", Offer("LUMPSUM", Money(1, "INR")))
    with pytest.raises(RenderFailed) as failure:
        render_email(compiled, context)
    assert "city" in failure.value.reason
    assert "Asha" not in failure.value.reason


def test_subject_newlines_are_collapsed() -> None:
    compiled = compile_email(templates(subject_template="Hi\n{{ first_name }}\r\nBcc: x"), offer_has_amount=True)
    context = build_context({"first_name": "Asha", "city": "Pune"}, "C", Offer("LUMPSUM", Money(1, "INR")))
    assert render_email(compiled, context).subject == "Hi Asha Bcc: x"


def test_python_internals_are_refused_when_the_campaign_is_saved() -> None:
    with pytest.raises(InvalidArgument) as error:
        compile_email(templates(text_template="{{ first_name.__class__.__mro__ }}"), offer_has_amount=True)
    assert error.value.field == "campaign.content.email.text_template"
    assert "may not use" in error.value.message


def test_sandbox_still_blocks_internals_reached_dynamically() -> None:
    # A computed attribute name escapes the static check; the sandbox refuses it at render time.
    compiled = compile_email(templates(text_template="{{ first_name|attr('_' ~ '_class__') }}"), offer_has_amount=True)
    context = build_context({"first_name": "Asha", "city": "Pune"}, "C", Offer("LUMPSUM", Money(1, "INR")))
    with pytest.raises(RenderFailed):
        render_email(compiled, context)


def test_valid_spec_gets_its_defaults() -> None:
    normalised, _ = validate_spec(spec(), "Asia/Kolkata")
    assert (normalised.programme, normalised.trigger_code, normalised.time_zone) == ("CSELL", "T00", "Asia/Kolkata")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"display_name": "  "}, "campaign.display_name"),
        ({"programme": "csell"}, "campaign.programme"),
        ({"trigger_code": "T6"}, "campaign.trigger_code"),
        ({"segment_id": ""}, "campaign.segment_id"),
        ({"channel": "SMS"}, "campaign.content.sms"),
        ({"channel": "BANNER"}, "campaign.channel"),
        ({"channel": "UNSPECIFIED"}, "campaign.channel"),
        ({"offer": OfferTerms("", None)}, "campaign.offer.product_code"),
        ({"email": None}, "campaign.content.email"),
        ({"time_zone": "Mars/Olympus"}, "campaign.schedule.time_zone"),
        ({"time_zone": "../etc/passwd"}, "campaign.schedule.time_zone"),
    ],
)
def test_invalid_specs_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        validate_spec(spec(**overrides), "Asia/Kolkata")
    assert error.value.field == field


def test_a_channel_without_content_is_refused_saying_what_to_add() -> None:
    with pytest.raises(InvalidArgument) as error:
        validate_spec(spec(channel="WHATSAPP"), "Asia/Kolkata")
    assert error.value.field == "campaign.content.whatsapp"
    assert "add its content or remove the channel" in error.value.message


def test_draft_segments_cannot_be_targeted() -> None:
    require_published("seg_1", "PUBLISHED")
    with pytest.raises(FailedPrecondition) as error:
        require_published("seg_1", "DRAFT")
    assert error.value.message == "segment seg_1 is DRAFT; publish it before targeting it"


def test_launch_runs_now_or_schedules_for_a_future_send_time() -> None:
    now = datetime(2026, 10, 31, 20, 0, tzinfo=UTC)
    immediate = plan_launch(None, "Asia/Kolkata", now)
    assert (immediate.state, immediate.due_at, immediate.month) == (CampaignState.RUNNING, now, "NOV")
    later = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)
    scheduled = plan_launch(later, "Asia/Kolkata", now)
    assert (scheduled.state, scheduled.due_at, scheduled.month) == (CampaignState.SCHEDULED, later, "DEC")
    past = plan_launch(datetime(2026, 1, 1, tzinfo=UTC), "Asia/Kolkata", now)
    assert past.state == CampaignState.RUNNING
