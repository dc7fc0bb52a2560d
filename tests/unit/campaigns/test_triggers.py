"""The trigger catalog, the cool-down and which segment entries fire a triggered campaign."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plumbing.errors import InvalidArgument
from services.campaigns.automation import Automation
from services.campaigns.resends import ResendRule
from services.campaigns.triggers import (
    DEFAULT_TRIGGER_CATALOG,
    TriggerCatalogError,
    TriggerRule,
    cool_down_over,
    fires,
    load_trigger_catalog,
    parse_trigger_catalog,
    trigger_day,
    validate_trigger,
)

NOW = datetime(2026, 11, 13, 9, 15, tzinfo=UTC)
CATALOG = load_trigger_catalog(str(DEFAULT_TRIGGER_CATALOG))


def test_the_shipped_catalog_has_the_lenders_triggers() -> None:
    assert {"T01", "T02", "T03", "T04", "T05", "T06", "T08"} <= {t.code for t in CATALOG.triggers}
    t06 = CATALOG.get("T06")
    assert t06 is not None and "GST state" in t06.name


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"triggers": [{"code": "T00", "name": "broadcast"}]}, "T01 to T99"),
        ({"triggers": [{"code": "T01", "name": "a"}, {"code": "T01", "name": "b"}]}, "listed twice"),
        ({"triggers": [{"code": "T01"}]}, "name is required"),
        ({"version": "1"}, "triggers"),
    ],
)
def test_a_malformed_catalog_names_the_entry(document: object, message: str) -> None:
    with pytest.raises(TriggerCatalogError, match=message):
        parse_trigger_catalog(document, "triggers.yaml")


def test_a_triggered_campaign_needs_a_catalog_code_and_no_schedule() -> None:
    def validate(code: str = "T01", cool_down: timedelta | None = None, **flags: bool) -> TriggerRule:
        options = {"has_send_time": False, "has_recurrence": False, "has_distribution": False, **flags}
        return validate_trigger(CATALOG, code, cool_down, **options)

    assert validate().cool_down == timedelta(days=30)
    assert validate(cool_down=timedelta(days=7)).cool_down == timedelta(days=7)
    with pytest.raises(InvalidArgument) as unknown:
        validate("T42")
    assert unknown.value.field == "campaign.trigger_code" and "T06 (" in str(unknown.value)
    with pytest.raises(InvalidArgument) as short:
        validate(cool_down=timedelta(hours=23))
    assert short.value.field == "campaign.trigger.cool_down"
    with pytest.raises(InvalidArgument) as scheduled:
        validate(has_send_time=True)
    assert scheduled.value.field == "campaign.schedule"
    with pytest.raises(InvalidArgument) as staggered:
        validate(has_distribution=True)
    assert staggered.value.field == "campaign.distribution"


@given(
    since_last=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=120)),
    cool_down_days=st.integers(min_value=1, max_value=90),
)
def test_cool_down_allows_exactly_from_the_end_of_the_period(since_last: timedelta, cool_down_days: int) -> None:
    cool_down = timedelta(days=cool_down_days)
    assert cool_down_over(NOW - since_last, NOW, cool_down) == (since_last >= cool_down)


def test_no_earlier_outreach_means_no_cool_down() -> None:
    assert cool_down_over(None, NOW, timedelta(days=30))
    assert not cool_down_over(NOW - timedelta(days=30) + timedelta(seconds=1), NOW, timedelta(days=30))
    assert cool_down_over(NOW - timedelta(days=30), NOW, timedelta(days=30))


def test_the_trigger_day_is_the_local_day() -> None:
    # 20:00 UTC on 31 Oct is 01:30 on 1 Nov in Kolkata: the day (and its run) is 1 Nov local.
    late = datetime(2026, 10, 31, 20, 0, tzinfo=UTC)
    assert trigger_day(late, "Asia/Kolkata") == datetime(2026, 10, 31, 18, 30, tzinfo=UTC)
    assert trigger_day(late, "UTC") == datetime(2026, 10, 31, tzinfo=UTC)


def test_only_entries_after_launch_on_the_pinned_version_fire() -> None:
    launched = NOW - timedelta(hours=1)
    assert fires(NOW, launched, 3, 3)
    assert not fires(launched - timedelta(seconds=1), launched, 3, 3)
    assert not fires(NOW, launched, 4, 3)
    assert not fires(NOW, None, 3, 3)


def test_automation_round_trips_through_json() -> None:
    automation = Automation(TriggerRule(cool_down_seconds=86400 * 7), ResendRule("NOT_CLICKED", 7200, 9 * 60 + 30))
    assert Automation.from_json(automation.to_json()) == automation
    assert Automation().to_json() is None
    assert Automation.from_json(None) == Automation()


def test_trigger_and_resend_round_trip_through_the_contract() -> None:
    from google.protobuf.duration_pb2 import Duration

    from services.campaigns.automation import automation_from_proto, fill_automation
    from xsell.campaigns.v1 import resources_pb2

    given = resources_pb2.Campaign(
        trigger=resources_pb2.Trigger(
            source=resources_pb2.TRIGGER_SOURCE_SEGMENT_ENTRY, cool_down=Duration(seconds=7 * 86400)
        ),
        resend=resources_pb2.Resend(
            condition=resources_pb2.RESEND_CONDITION_NOT_CLICKED, delay=Duration(seconds=2 * 86400), time_of_day="18:30"
        ),
    )
    automation = automation_from_proto(given, CATALOG, "T06")
    assert automation.trigger == TriggerRule(cool_down_seconds=7 * 86400)
    assert automation.resend == ResendRule("NOT_CLICKED", 2 * 86400, 18 * 60 + 30)
    shown = resources_pb2.Campaign()
    fill_automation(shown, Automation.from_json(automation.to_json()))
    assert (shown.trigger, shown.resend) == (given.trigger, given.resend)
    with pytest.raises(InvalidArgument) as unsourced:
        automation_from_proto(resources_pb2.Campaign(trigger=resources_pb2.Trigger()), CATALOG, "T06")
    assert unsourced.value.field == "campaign.trigger.source"
    assert automation_from_proto(resources_pb2.Campaign(), CATALOG, "T00") == Automation()


def test_a_resend_or_cool_down_that_is_no_duration_or_too_long_or_an_unknown_condition_names_its_field() -> None:
    """A resend delay of 34,800 years was stored and then overflowed the follow-up loop at every poll; an unknown
    condition and a 10**14-second cool-down answered INTERNAL."""
    from google.protobuf.duration_pb2 import Duration

    from services.campaigns.automation import automation_from_proto
    from xsell.campaigns.v1 import resources_pb2

    def resend(condition: int, seconds: int) -> resources_pb2.Campaign:
        return resources_pb2.Campaign(resend=resources_pb2.Resend(condition=condition, delay=Duration(seconds=seconds)))

    not_opened = resources_pb2.RESEND_CONDITION_NOT_OPENED
    cool_down = resources_pb2.Campaign(
        trigger=resources_pb2.Trigger(
            source=resources_pb2.TRIGGER_SOURCE_SEGMENT_ENTRY, cool_down=Duration(seconds=10**14)
        )
    )
    for campaign, field in (
        (resend(not_opened, 2**40), "campaign.resend.delay"),
        (resend(not_opened, 91 * 86400), "campaign.resend.delay"),
        (resend(99, 2 * 86400), "campaign.resend.condition"),
        (cool_down, "campaign.trigger.cool_down"),
    ):
        with pytest.raises(InvalidArgument) as refused:
            automation_from_proto(campaign, CATALOG, "T06")
        assert refused.value.field == field
