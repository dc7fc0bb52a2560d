"""Recurrence, distribution steps, quiet hours and the automatic-pause rule, without I/O."""

from datetime import UTC, datetime
from typing import Any

import pytest

from plumbing.errors import InvalidArgument
from services.campaigns import messages
from services.campaigns.scheduling import (
    AutoPause,
    DeliveryOptions,
    Distribution,
    FrequencyCapRule,
    QuietHours,
    Recurrence,
    next_occurrence,
    recipient_time_zone,
    recurrence_cron,
    validate_distribution,
)
from xsell.campaigns.v1 import resources_pb2


def test_frequencies_become_cron_expressions() -> None:
    assert recurrence_cron("DAILY", "09:30", 0, 0, "", "r") == "30 9 * * *"
    assert recurrence_cron("WEEKLY", "", 7, 0, "", "r") == "0 9 * * 0"
    assert recurrence_cron("MONTHLY", "18:05", 0, 28, "", "r") == "5 18 28 * *"
    assert recurrence_cron("", "", 0, 0, "30 9 * * 1-5", "r") == "30 9 * * 1-5"


@pytest.mark.parametrize(
    ("frequency", "time_of_day", "dow", "dom", "cron", "field"),
    [
        ("", "", 0, 0, "", "r.frequency"),
        ("WEEKLY", "09:00", 8, 0, "", "r.day_of_week"),
        ("MONTHLY", "09:00", 0, 31, "", "r.day_of_month"),
        ("DAILY", "25:00", 0, 0, "", "r.time_of_day"),
        ("", "", 0, 0, "every day", "r.cron"),
        ("DAILY", "", 0, 0, "0 9 * * *", "r.cron"),
    ],
)
def test_bad_recurrences_name_the_field(
    frequency: str, time_of_day: str, dow: int, dom: int, cron: str, field: str
) -> None:
    with pytest.raises(InvalidArgument) as error:
        recurrence_cron(frequency, time_of_day, dow, dom, cron, "r")
    assert error.value.field == field


def test_occurrences_are_local_wall_clock_times() -> None:
    daily = Recurrence("0 9 * * *")
    # 09:00 in Kolkata is 03:30 UTC; after 04:00 UTC the next one is tomorrow's.
    assert next_occurrence(daily, "Asia/Kolkata", datetime(2026, 11, 3, 2, 0, tzinfo=UTC)) == datetime(
        2026, 11, 3, 3, 30, tzinfo=UTC
    )
    assert next_occurrence(daily, "Asia/Kolkata", datetime(2026, 11, 3, 4, 0, tzinfo=UTC)) == datetime(
        2026, 11, 4, 3, 30, tzinfo=UTC
    )
    ended = Recurrence("0 9 * * *", end=datetime(2026, 11, 4, 0, 0, tzinfo=UTC))
    assert next_occurrence(ended, "Asia/Kolkata", datetime(2026, 11, 3, 4, 0, tzinfo=UTC)) is None


def test_distribution_steps() -> None:
    assert Distribution(10, 3600).step_size(1000) == 100
    assert Distribution(10, 3600).step_size(5) == 1
    assert Distribution(40, 3600).step_size(5) == 2
    assert Distribution().step_size(7) == 7
    assert validate_distribution(0, 0) == Distribution()
    with pytest.raises(InvalidArgument) as error:
        validate_distribution(10, 30)
    assert error.value.field == "campaign.distribution.interval"


def test_quiet_hours_across_midnight_defer_to_their_end() -> None:
    quiet = QuietHours(21 * 60, 9 * 60)
    # 23:00 IST on 3 Nov (17:30 UTC) waits until 09:00 IST on 4 Nov (03:30 UTC).
    assert quiet.release_time(datetime(2026, 11, 3, 17, 30, tzinfo=UTC), "Asia/Kolkata") == datetime(
        2026, 11, 4, 3, 30, tzinfo=UTC
    )
    # 06:00 IST waits until 09:00 the same day.
    assert quiet.release_time(datetime(2026, 11, 3, 0, 30, tzinfo=UTC), "Asia/Kolkata") == datetime(
        2026, 11, 3, 3, 30, tzinfo=UTC
    )
    noon = datetime(2026, 11, 3, 6, 30, tzinfo=UTC)
    assert quiet.release_time(noon, "Asia/Kolkata") == noon
    # The same instant is 22:30 in Los Angeles the evening before: quiet there.
    assert quiet.release_time(noon, "America/Los_Angeles") > noon


def test_recipient_time_zone_falls_back_to_the_campaigns() -> None:
    assert recipient_time_zone("Asia/Dubai", "Asia/Kolkata") == "Asia/Dubai"
    assert recipient_time_zone("Mars/Olympus", "Asia/Kolkata") == "Asia/Kolkata"
    assert recipient_time_zone(None, "Asia/Kolkata") == "Asia/Kolkata"


def test_auto_pause_judges_rates_once_enough_are_released() -> None:
    rule = AutoPause(max_bounce_rate=0.05, max_complaint_rate=0.001, min_released=100)
    assert rule.breach(99, 50, 0, 0) is None
    assert rule.breach(100, 4, 0, 0) is None
    assert rule.breach(100, 5, 0, 0) == "bounce rate 0.050 >= 0.050 over 100 released outreaches"
    assert (rule.breach(1000, 0, 1, 0) or "").startswith("complaint rate")
    assert AutoPause().breach(1000, 1000, 1000, 1000) is None
    failing = AutoPause(max_failure_rate=0.2, min_released=10)
    assert failing.breach(10, 0, 0, 0, failed=1) is None
    assert failing.breach(10, 0, 0, 0, failed=2) == "failure rate 0.200 >= 0.200 over 10 released outreaches"


def test_options_round_trip_through_json() -> None:
    options = DeliveryOptions(
        recurrence=Recurrence("0 9 * * 1", end=datetime(2027, 1, 1, tzinfo=UTC)),
        distribution=Distribution(10, 3600),
        quiet_hours=QuietHours(1260, 540),
        auto_pause=AutoPause(0.05, 0.01, 0.02, 50, max_failure_rate=0.3),
        frequency_caps=(FrequencyCapRule("CHANNEL", "DAY", 1),),
        priority=5,
        holdout_basis_points=1000,
    )
    assert DeliveryOptions.from_json(options.to_json()) == options
    assert DeliveryOptions.from_json(None) == DeliveryOptions()


def test_options_parsed_again_for_another_dict_and_kept_for_the_same_one() -> None:
    first = {"priority": 3, "holdout_basis_points": 500, "quiet_hours": {"start_minute": 1260, "end_minute": 540}}
    parsed = DeliveryOptions.from_json(first)
    assert DeliveryOptions.from_json(first) is parsed
    # An equal-looking dict from another row, and one that differs, are read for themselves.
    other = {"priority": 7}
    assert DeliveryOptions.from_json(other).priority == 7
    assert DeliveryOptions.from_json(other).holdout_basis_points == 0
    assert DeliveryOptions.from_json(first).priority == 3
    assert DeliveryOptions.from_json(None) == DeliveryOptions()


def test_a_send_or_end_time_outside_what_a_timestamp_holds_is_invalid_and_names_the_field() -> None:
    """protobuf refuses to read such a Timestamp with a bare ValueError, which answered INTERNAL."""
    campaign = resources_pb2.Campaign(display_name="Top-up")
    campaign.schedule.send_time.seconds = 2**40
    with pytest.raises(InvalidArgument) as raised:
        messages.spec_from_proto(campaign)
    assert raised.value.field == "campaign.schedule.send_time"
    recurring = resources_pb2.Campaign(display_name="Top-up")
    recurring.schedule.recurrence.frequency = resources_pb2.RECURRENCE_FREQUENCY_DAILY
    recurring.schedule.recurrence.end_time.nanos = -1
    with pytest.raises(InvalidArgument) as raised:
        messages.options_from_proto(recurring)
    assert raised.value.field == "campaign.schedule.recurrence.end_time"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: c.frequency_caps.add(scope=99, period=1, max_outreaches=1), "campaign.frequency_caps[0].scope"),
        (lambda c: c.frequency_caps.add(scope=1, period=99, max_outreaches=1), "campaign.frequency_caps[0].period"),
        (lambda c: setattr(c.schedule.recurrence, "frequency", 99), "campaign.schedule.recurrence.frequency"),
        (lambda c: setattr(c.distribution.interval, "seconds", 10**14), "campaign.distribution.interval"),
        (lambda c: setattr(c.distribution.interval, "nanos", 10**9), "campaign.distribution.interval"),
    ],
    ids=["cap-scope", "cap-period", "frequency", "interval-overflow", "interval-nanos"],
)
def test_unknown_enum_values_and_impossible_durations_name_their_field(change: Any, field: str) -> None:
    """Each answered INTERNAL (Name's ValueError, ToTimedelta's OverflowError) (session 25's fuzzing)."""
    campaign = resources_pb2.Campaign(display_name="Top-up")
    change(campaign)
    with pytest.raises(InvalidArgument) as raised:
        messages.options_from_proto(campaign)
    assert raised.value.field == field


def test_a_time_zone_too_long_for_a_file_name_is_not_an_iana_zone() -> None:
    from services.campaigns.campaigns import validate_time_zone

    with pytest.raises(InvalidArgument) as raised:
        validate_time_zone("a" * 10_000, "Asia/Kolkata")  # zoneinfo raised OSError (INTERNAL)
    assert raised.value.field == "campaign.schedule.time_zone"
    assert len(raised.value.message) < 200
