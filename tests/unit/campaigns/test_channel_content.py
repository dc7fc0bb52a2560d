"""Content on every channel: the checks before anything is sent, channel choice with fallback, and rendering."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plumbing.errors import InvalidArgument
from services.campaigns.campaigns import CampaignSpec, validate_spec
from services.campaigns.content import (
    CompiledContent,
    ContentTemplates,
    DltTemplate,
    PushTemplates,
    RegistryError,
    SmsTemplates,
    TemplateRegistry,
    WebhookTemplates,
    WhatsAppTemplate,
    WhatsAppTemplates,
    channel_order,
    check_attributes,
    compile_content,
    contact_address,
    parse_registry,
    unavailable_reason,
)
from services.campaigns.content_files import DEFAULT_PRODUCT_CATALOG, DEFAULT_TEMPLATE_REGISTRY, load_library
from services.campaigns.offers import OfferTerms
from services.campaigns.products import ProductCatalog
from services.campaigns.rendering import EmailTemplates, Money, Offer, RenderedEmail, RenderFailed

DLT_ID = "1107161234567890123"
REGISTRY = TemplateRegistry(
    version="test",
    sms={
        DLT_ID: DltTemplate(
            DLT_ID, frozenset({"FUNDSY"}), "Dear {#var#}, a lumpsum of {#var#} can complement your SIPs -Fundsy"
        )
    },
    whatsapp={("lumpsum_offer_v2", "en"): WhatsAppTemplate("lumpsum_offer_v2", "en", 2)},
)
EMAIL = EmailTemplates(
    "{{ first_name }}, a lumpsum idea", '<p>Hi</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>', "", "Fundsy"
)
SMS = SmsTemplates(
    DLT_ID, "FUNDSY", "Dear {{ first_name }}, a lumpsum of {{ offer_amount }} can complement your SIPs -Fundsy"
)
WHATSAPP = WhatsAppTemplates("lumpsum_offer_v2", "en", ("{{ first_name }}", "{{ offer_amount }}"))
PUSH = PushTemplates(
    "{{ first_name }}, a lumpsum idea", "Invest {{ offer_amount }}", "fundsy://lumpsum/{{ campaign_id }}"
)
WEBHOOK = WebhookTemplates(
    "https://crm.example/hooks/xsell",
    '{"campaign_id": {{ campaign_id | tojson }}, "name": {{ first_name | tojson }}, "aum": {{ total_aum.rupees }}}',
)
ALL = ContentTemplates(EMAIL, SMS, WHATSAPP, PUSH, WEBHOOK)
OFFER = Offer("LUMPSUM", Money(17_40_000_00, "INR"))
NO_PRODUCTS = ProductCatalog(version="none")


def compiled(templates: ContentTemplates = ALL, order: tuple[str, ...] = ("EMAIL",)) -> CompiledContent:
    return compile_content(templates, order, offer_has_amount=True, registry=REGISTRY)


def person(**attributes: object) -> dict[str, object]:
    return {"first_name": "Asha", "total_aum": Money(4_52_400_00, "INR"), **attributes}


def render(channel: str, attributes: dict[str, object], templates: ContentTemplates = ALL) -> object:
    content = compiled(templates, (channel,))
    return content.render(channel, content.context(attributes, "CSELL-NOV-T06-0884", OFFER, NO_PRODUCTS))


# ---- the registry of DLT and WhatsApp templates ---------------------------------------------------


def test_sms_with_an_unregistered_dlt_template_is_refused_naming_the_field_and_the_fix() -> None:
    with pytest.raises(InvalidArgument) as error:
        compiled(ContentTemplates(sms=SmsTemplates("1107000000000000000", "FUNDSY", SMS.body_template)), ("SMS",))
    assert error.value.field == "campaign.content.sms.dlt_template_id"
    assert "not a registered DLT template" in error.value.message
    assert DLT_ID in error.value.message  # the registered ones are listed


def test_sms_sender_must_be_registered_for_the_template() -> None:
    with pytest.raises(InvalidArgument) as error:
        compiled(ContentTemplates(sms=SmsTemplates(DLT_ID, "OTHERS", SMS.body_template)), ("SMS",))
    assert error.value.field == "campaign.content.sms.sender_id"
    assert "FUNDSY" in error.value.message


def test_sms_body_must_follow_the_registered_text() -> None:
    body = "Hi {{ first_name }}, invest {{ offer_amount }} now -Fundsy"
    with pytest.raises(InvalidArgument) as error:
        compiled(ContentTemplates(sms=SmsTemplates(DLT_ID, "FUNDSY", body)), ("SMS",))
    assert error.value.field == "campaign.content.sms.body_template"
    assert "registered text" in error.value.message


def test_sms_body_may_fill_a_variable_with_fixed_text() -> None:
    body = "Dear Investor, a lumpsum of {{ offer_amount }} can complement your SIPs -Fundsy"
    compiled(ContentTemplates(sms=SmsTemplates(DLT_ID, "FUNDSY", body)), ("SMS",))


def test_sms_render_is_refused_when_a_variable_exceeds_thirty_characters() -> None:
    sms = render("SMS", person())
    assert sms.body == "Dear Asha, a lumpsum of ₹17.4 lakh can complement your SIPs -Fundsy"  # type: ignore[attr-defined]
    with pytest.raises(RenderFailed) as failure:
        render("SMS", person(first_name="A" * 31))
    assert "DLT template" in failure.value.reason
    assert "A" * 31 not in failure.value.reason


def test_an_unregistered_sms_template_fails_each_render_when_checks_are_off() -> None:
    content = compile_content(
        ContentTemplates(sms=SMS), ("SMS",), offer_has_amount=True, registry=TemplateRegistry(), check_registry=False
    )
    with pytest.raises(RenderFailed, match="no longer registered"):
        content.render("SMS", content.context(person(), "C", OFFER, NO_PRODUCTS))


def test_whatsapp_template_must_be_approved_in_its_language() -> None:
    with pytest.raises(InvalidArgument) as error:
        compiled(
            ContentTemplates(whatsapp=WhatsAppTemplates("lumpsum_offer_v2", "hi", WHATSAPP.parameter_templates)),
            ("WHATSAPP",),
        )
    assert error.value.field == "campaign.content.whatsapp.template_name"
    assert "lumpsum_offer_v2 (en)" in error.value.message


def test_whatsapp_parameter_count_must_match_the_template() -> None:
    with pytest.raises(InvalidArgument) as error:
        compiled(
            ContentTemplates(whatsapp=WhatsAppTemplates("lumpsum_offer_v2", "", ("{{ first_name }}",))), ("WHATSAPP",)
        )
    assert error.value.field == "campaign.content.whatsapp.parameter_templates"
    assert "has 2 body parameters" in error.value.message


def test_whatsapp_parameters_are_single_line_and_never_empty() -> None:
    templates = ContentTemplates(
        whatsapp=WhatsAppTemplates("lumpsum_offer_v2", "", ("{{ first_name }}\n\tji", "{{ city }}"))
    )
    message = render("WHATSAPP", person(city="Pune"), templates)
    assert message.parameters == ("Asha ji", "Pune")  # type: ignore[attr-defined]
    assert message.language_code == "en"  # type: ignore[attr-defined]
    with pytest.raises(RenderFailed, match="parameter 2 renders empty"):
        render("WHATSAPP", person(city="  "), templates)


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ({}, "'version' is required"),
        ({"version": 1, "sms": [{"dlt_template_id": 1107, "sender_ids": ["FUNDSY"], "text": "x"}]}, "dlt_template_id"),
        ({"version": 1, "sms": [{"dlt_template_id": "1107161234", "sender_ids": ["FUND"], "text": "x"}]}, "sender_ids"),
        ({"version": 1, "whatsapp": [{"name": "Lumpsum Offer", "parameters": 1}]}, "whatsapp[0].name"),
        ({"version": 1, "whatsapp": [{"name": "a", "parameters": -1}]}, "whatsapp[0].parameters"),
    ],
)
def test_a_malformed_registry_names_the_entry(document: dict[str, object], fragment: str) -> None:
    with pytest.raises(RegistryError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_registry(document, "templates.yaml")


def test_the_shipped_catalog_and_registry_load() -> None:
    library = load_library(str(DEFAULT_PRODUCT_CATALOG), str(DEFAULT_TEMPLATE_REGISTRY))
    assert library.products.version and len(library.products.products) >= 3
    assert "1107161234567890123" in library.registry.sms
    assert ("lumpsum_offer_v2", "en") in library.registry.whatsapp


# ---- unsafe syntax and unknown attributes ---------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ first_name.__class__ }}",
        "{{ first_name['__class__'] }}",
        "{{ offer.items.__globals__ }}",
        "{{ first_name.mro() }}",
        "{{ (lambda_ or first_name).upper.__self__ }}",
        "{% include 'other.html' %}",
        "{% import 'macros' as m %}",
        "{% extends 'base' %}",
    ],
)
def test_unsafe_syntax_is_refused_at_save_naming_the_field(source: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        compiled(ContentTemplates(push=PushTemplates("Hi", source)), ("PUSH",))
    assert error.value.field == "campaign.content.push.body_template"


def test_unknown_filters_are_syntax_errors() -> None:
    with pytest.raises(InvalidArgument) as error:
        compiled(ContentTemplates(push=PushTemplates("Hi", "{{ total_aum | inrr }}")), ("PUSH",))
    assert "inrr" in error.value.message


def test_unknown_attributes_name_the_field_and_suggest_the_closest() -> None:
    templates = ContentTemplates(
        email=EMAIL, whatsapp=WhatsAppTemplates("lumpsum_offer_v2", "", ("{{ first_name }}", "{{ fund_categores }}"))
    )
    with pytest.raises(InvalidArgument) as error:
        check_attributes(templates, {"email", "first_name", "fund_categories", "total_aum"})
    assert error.value.field == "campaign.content.whatsapp.parameter_templates[1]"
    assert "'fund_categores'" in error.value.message
    assert "did you mean fund_categories" in error.value.message


def test_known_attributes_loop_variables_and_service_names_pass() -> None:
    templates = ContentTemplates(
        email=EmailTemplates(
            "{{ first_name }}: {{ offer_amount }}",
            "{% for fund in recommendations %}{{ fund.name }}{% endfor %}{% set x = 1 %}{{ x }}"
            '<a href="{{ unsubscribe_url }}">u</a>',
            "{% for c in fund_categories %}{{ c }}{% endfor %} {{ campaign_id }}",
            "Fundsy",
        )
    )
    check_attributes(templates, {"fund_categories"})


# ---- channels: content required, order, availability ----------------------------------------------


def test_each_channel_of_the_order_needs_content() -> None:
    with pytest.raises(InvalidArgument) as error:
        compiled(ContentTemplates(email=EMAIL), ("EMAIL", "SMS"))
    assert error.value.field == "campaign.content.sms"
    assert "a fallback channel" in error.value.message


@pytest.mark.parametrize(
    ("fallbacks", "field"),
    [(("EMAIL",), "campaign.fallback_channels[0]"), (("SMS", "SMS"), "campaign.fallback_channels[1]")],
)
def test_fallback_channels_are_listed_once(fallbacks: tuple[str, ...], field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        channel_order("EMAIL", fallbacks)
    assert error.value.field == field


@pytest.mark.parametrize(
    ("channel", "attributes", "reason"),
    [
        ("EMAIL", {}, "no email attribute"),
        ("EMAIL", {"email": "asha@example.in"}, None),
        ("SMS", {}, "no phone attribute"),
        ("SMS", {"phone": "98123 45678"}, "phone attribute is not an E.164 number (+919812345678)"),
        ("SMS", {"phone": "+919812345678"}, None),
        ("WHATSAPP", {"phone": "+919812345678"}, "whatsapp_opt_in attribute is not true"),
        ("WHATSAPP", {"phone": "+919812345678", "whatsapp_opt_in": "yes"}, "whatsapp_opt_in attribute is not true"),
        ("WHATSAPP", {"phone": "+919812345678", "whatsapp_opt_in": True}, None),
        ("PUSH", {"push_token": " "}, "no push_token attribute"),
        ("PUSH", {"push_token": "fcm-token-1"}, None),
        ("WEBHOOK", {}, None),
    ],
)
def test_which_attribute_makes_each_channel_available(
    channel: str, attributes: dict[str, object], reason: str | None
) -> None:
    assert unavailable_reason(channel, attributes) == reason


def test_the_first_reachable_channel_of_the_order_is_chosen() -> None:
    content = compiled(order=("WHATSAPP", "SMS", "EMAIL"))
    opted_in = {"phone": "+919812345678", "whatsapp_opt_in": True, "email": "a@example.in"}
    assert content.choose_channel(opted_in) == "WHATSAPP"
    assert content.choose_channel({**opted_in, "whatsapp_opt_in": False}) == "SMS"
    assert content.choose_channel({"email": "a@example.in"}) == "EMAIL"
    assert content.choose_channel({"push_token": "t"}) is None
    assert contact_address("SMS", opted_in) == "+919812345678"
    assert contact_address("WEBHOOK", opted_in) == ""


def test_attributes_to_fetch_include_every_contact_of_the_order() -> None:
    content = compiled(order=("WHATSAPP", "PUSH"))
    names = content.attribute_names()
    assert {"phone", "whatsapp_opt_in", "push_token", "first_name", "total_aum"} <= set(names)
    assert "fund_categories" not in names


def test_recommendations_fetch_the_attributes_the_rule_reads() -> None:
    templates = ContentTemplates(push=PushTemplates("Hi", "{{ recommendations[0].name }}"))
    names = compile_content(templates, ("PUSH",), offer_has_amount=False, registry=REGISTRY).attribute_names()
    assert {"fund_categories", "customer_tier"} <= set(names)


# ---- rendering per channel -------------------------------------------------------------------------


def test_push_renders_title_body_and_deep_link() -> None:
    push = render("PUSH", person())
    assert (push.title, push.body, push.deep_link) == (  # type: ignore[attr-defined]
        "Asha, a lumpsum idea",
        "Invest ₹17.4 lakh",
        "fundsy://lumpsum/CSELL-NOV-T06-0884",
    )


def test_a_push_that_renders_blank_is_not_sent() -> None:
    templates = ContentTemplates(push=PushTemplates("{{ first_name }}", "{{ city }}"))
    with pytest.raises(RenderFailed, match="push title renders empty"):
        render("PUSH", person(first_name="", city="Pune"), templates)
    with pytest.raises(RenderFailed, match="push body renders empty"):
        render("PUSH", person(city=" "), templates)


def test_webhook_payload_is_compact_json_with_values_escaped_by_tojson() -> None:
    hook = render("WEBHOOK", person(first_name='Asha "AK" <K>'))
    assert hook.url == "https://crm.example/hooks/xsell"  # type: ignore[attr-defined]
    assert json.loads(hook.payload_json) == {  # type: ignore[attr-defined]
        "campaign_id": "CSELL-NOV-T06-0884",
        "name": 'Asha "AK" <K>',
        "aum": 452400,
    }


def test_webhook_payload_that_is_not_a_json_object_fails_the_render() -> None:
    templates = ContentTemplates(webhook=WebhookTemplates("https://crm.example/x", '{"name": "{{ first_name }}"}'))
    with pytest.raises(RenderFailed, match="not JSON"):
        render("WEBHOOK", person(first_name='A"B'), templates)
    listing = ContentTemplates(webhook=WebhookTemplates("https://crm.example/x", "[1, 2]"))
    with pytest.raises(RenderFailed, match="JSON object"):
        render("WEBHOOK", person(), listing)


@pytest.mark.parametrize("url", ["http://crm.example/x", "crm.example/x", "https://", "{{ url }}"])
def test_webhook_url_must_be_https(url: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        compiled(ContentTemplates(webhook=WebhookTemplates(url, "{}")), ("WEBHOOK",))
    assert error.value.field == "campaign.content.webhook.url"


def test_email_still_renders_through_the_same_path() -> None:
    email = render("EMAIL", person())
    assert isinstance(email, RenderedEmail) and email.subject == "Asha, a lumpsum idea"


def test_a_spec_with_sms_and_fallbacks_validates_against_the_registry() -> None:
    spec = CampaignSpec(
        display_name="Lumpsum for SIP investors",
        labels=(),
        category=1,
        programme="",
        trigger_code="",
        segment_id="seg_1",
        channel="SMS",
        offer=OfferTerms(OFFER.product_code, OFFER.amount),
        email=EMAIL,
        send_time=None,
        time_zone="",
        sms=SMS,
        fallback_channels=("EMAIL",),
    )
    _, content = validate_spec(spec, "Asia/Kolkata", REGISTRY)
    assert content.order == ("SMS", "EMAIL")
    with pytest.raises(InvalidArgument) as error:
        validate_spec(spec, "Asia/Kolkata")  # no registry: nothing is registered
    assert error.value.field == "campaign.content.sms.dlt_template_id"


@given(name=st.from_regex(r"_[A-Za-z0-9_]{0,12}", fullmatch=True), subscript=st.booleans())
def test_any_underscore_name_is_refused_however_it_is_reached(name: str, subscript: bool) -> None:
    access = f"['{name}']" if subscript else f".{name}"
    with pytest.raises(InvalidArgument) as error:
        compiled(ContentTemplates(push=PushTemplates("Hi", f"{{{{ offer{access} }}}}")), ("PUSH",))
    assert name in error.value.message


@given(
    fills=st.lists(
        st.text(alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), max_size=40),
        min_size=2,
        max_size=2,
    )
)
def test_a_dlt_variable_takes_at_most_thirty_characters(fills: list[str]) -> None:
    template = DltTemplate(DLT_ID, frozenset({"FUNDSY"}), "Dear {#var#}, invest {#var#} today")
    body = f"Dear {fills[0]}, invest {fills[1]} today"
    assert template.matches(body) == all(len(fill) <= 30 for fill in fills)
