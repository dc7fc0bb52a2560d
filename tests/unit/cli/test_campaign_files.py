"""Campaign files: the shorthands map onto the proto, and every mistake names its path in the file."""

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from cli.apply import contains
from cli.campaign_files import CampaignFileError, load_campaign_file, parse_campaign_data
from cli.client import derived_request_id
from services.campaigns.campaigns import validate_spec
from services.campaigns.content import check_attributes
from services.campaigns.content_files import DEFAULT_TEMPLATE_REGISTRY, load_library
from services.campaigns.messages import spec_from_proto
from services.campaigns.offers import check_catalog
from services.segments.catalog import definitions_from_document
from xsell.campaigns.v1 import resources_pb2 as r
from xsell.segments.v1 import resources_pb2 as s
from xsell.type.v1 import channel_pb2

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "campaigns"
BASE = {"display_name": "Lumpsum", "segment": "SIP-only investors"}


def test_every_example_campaign_file_parses() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert files
    for path in files:
        parsed = load_campaign_file(path)
        assert parsed.segment_name and parsed.campaign.display_name


def test_the_example_campaigns_pass_the_services_checks_against_the_default_catalog() -> None:
    """What CreateCampaign checks without a database: the spec, the content (SMS and WhatsApp against the default
    template registry, as the service loads it), the offer's attributes and their types."""
    library = load_library("", str(DEFAULT_TEMPLATE_REGISTRY))
    catalog_file = Path(__file__).resolve().parents[3] / "services" / "segments" / "catalogs" / "default.yaml"
    definitions = definitions_from_document(yaml.safe_load(catalog_file.read_text(encoding="utf-8")))
    types = {definition.name: definition.type for definition in definitions}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        campaign = load_campaign_file(path).campaign
        campaign.segment_id = "seg_example"
        spec, _ = validate_spec(spec_from_proto(campaign), "Asia/Kolkata", library.registry)
        check_attributes(spec.templates(), types)
        check_catalog(spec.offer, types)


def test_shorthands_become_the_proto_values() -> None:
    parsed = parse_campaign_data(
        BASE
        | {
            "channel": "email",
            "fallback_channels": ["SMS", "whatsapp"],
            "category": "upsell-increase-value",
            "offer": {"product_code": "PL", "amount": {"inr": 17400.5}},
            "distribution": {"percent_per_step": 25, "interval": "1.5h"},
            "frequency_caps": [{"scope": "channel", "period": "week", "max_outreaches": 2}],
            "schedule": {"send_time": "2026-12-01T09:00:00+05:30", "time_zone": "Asia/Kolkata"},
        }
    )
    campaign = parsed.campaign
    assert parsed.segment_name == "SIP-only investors" and not campaign.segment_id
    assert campaign.channel == channel_pb2.CHANNEL_EMAIL
    assert list(campaign.fallback_channels) == [channel_pb2.CHANNEL_SMS, channel_pb2.CHANNEL_WHATSAPP]
    assert campaign.category == r.CAMPAIGN_CATEGORY_UPSELL_INCREASE_VALUE
    assert (campaign.offer.amount.minor_units, campaign.offer.amount.currency_code) == (1740050, "INR")
    assert campaign.distribution.interval.seconds == 5400
    assert campaign.frequency_caps[0].scope == r.CAP_SCOPE_CHANNEL
    assert campaign.schedule.send_time.ToDatetime(UTC) == datetime(2026, 12, 1, 3, 30, tzinfo=UTC)


def test_an_offer_takes_its_amount_rule_and_eligibility_written_as_in_segment_files() -> None:
    parsed = parse_campaign_data(
        BASE
        | {
            "offer": {
                "product_code": "PL_TOPUP",
                "amount_rule": {"attribute": "preapproved_limit", "share_basis_points": 8000, "maximum": {"inr": 2e6}},
                "eligibility": [
                    {"name": "bureau_score", "gte": 750},
                    {"name": "held_products", "contains_none": ["personal_loan"]},
                    # The proto's own form is read too.
                    {"attribute": "kyc_status", "operator": "equals", "values": [{"string_value": "complete"}]},
                ],
            }
        }
    )
    offer = parsed.campaign.offer
    assert (offer.amount_rule.attribute, offer.amount_rule.share_basis_points) == ("preapproved_limit", 8000)
    assert offer.amount_rule.maximum.minor_units == 20_00_000_00
    score, held, kyc = offer.eligibility
    assert (score.attribute, score.operator, score.values[0].number_value) == (
        "bureau_score",
        s.OPERATOR_GREATER_OR_EQUAL,
        750,
    )
    assert held.operator == s.OPERATOR_CONTAINS_NONE and [v.string_value for v in held.values] == ["personal_loan"]
    assert (kyc.operator, kyc.values[0].string_value) == (s.OPERATOR_EQUALS, "complete")


@pytest.mark.parametrize(
    ("extra", "path", "says"),
    [
        ({"chanel": "email"}, "chanel", "did you mean 'channel'?"),
        ({"channel": "fax"}, "channel", "not one of email, sms, whatsapp, push, webhook"),
        ({"state": "RUNNING"}, "state", "assigned by the service"),
        ({"distribution": {"interval": "3 weeks"}}, "distribution.interval", "90s, 30m, 2h or 7d"),
        ({"schedule": {"send_time": "2026-12-01T09:00:00"}}, "schedule.send_time", "no time zone"),
        ({"offer": {"amount": {"inr": "12.345"}}}, "offer.amount.inr", "at most 2 decimals"),
        ({"frequency_caps": [{"scope": "all"}, {"sope": "all"}]}, "frequency_caps[1].sope", "did you mean 'scope'?"),
        ({"segment_id": "seg_1"}, "segment", "either segment"),
        ({"offer": {"eligibility": [{"name": "bureau_score", "gte": "high"}]}}, "offer.eligibility[0].gte", "number"),
        (
            {"offer": {"eligibility": [{"name": "bureau_score", "atleast": 7}]}},
            "offer.eligibility[0].atleast",
            "unknown",
        ),
    ],
)
def test_mistakes_name_the_path(extra: dict[str, object], path: str, says: str) -> None:
    with pytest.raises(CampaignFileError) as raised:
        parse_campaign_data(BASE | extra, source="c.yaml")
    assert raised.value.path == path
    assert str(raised.value).startswith(f"c.yaml: {path}: ") and says in str(raised.value)


def test_a_campaign_needs_a_name_and_a_segment() -> None:
    with pytest.raises(CampaignFileError, match="display_name is required"):
        parse_campaign_data({"segment": "x"})
    with pytest.raises(CampaignFileError, match=r"segment \(a display name\) or segment_id is required"):
        parse_campaign_data({"display_name": "x"})


def test_unchanged_means_every_field_in_the_file_holds_on_the_service() -> None:
    wanted = parse_campaign_data(BASE | {"channel": "email", "schedule": {"time_zone": "Asia/Kolkata"}}).campaign
    served = r.Campaign()
    served.CopyFrom(wanted)
    served.state = r.CAMPAIGN_STATE_DRAFT
    served.schedule.recurrence.time_of_day = "09:00"
    assert contains(served, wanted)
    served.schedule.time_zone = "UTC"
    assert not contains(served, wanted)


def test_request_ids_are_stable_and_depend_on_every_part() -> None:
    first = derived_request_id("apply-campaign", "cmp_1", 2, b"body")
    assert first == derived_request_id("apply-campaign", "cmp_1", 2, b"body")
    assert first != derived_request_id("apply-campaign", "cmp_1", 3, b"body")
    assert first != derived_request_id("apply-campaign", "cmp_1", 2, b"other")
