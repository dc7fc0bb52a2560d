"""Resend timing in the recipient's time zone, and who gets no resend."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plumbing.errors import InvalidArgument
from services.campaigns.resends import (
    GRACE,
    NOT_CLICKED,
    NOT_OPENED,
    ResendRule,
    next_local_time,
    no_resend_reason,
    resend_time,
    validate_resend,
)

ZONES = ["Asia/Kolkata", "America/New_York", "Europe/London", "Australia/Adelaide", "UTC"]
DAY = timedelta(days=1)


def test_two_days_later_at_ten_in_the_recipients_zone() -> None:
    rule = ResendRule(NOT_OPENED, delay_seconds=2 * 86400, minute_of_day=10 * 60)
    # Dispatched 13 Nov 09:15 IST (03:45 UTC): the delay ends 15 Nov 09:15 IST, the resend goes 15 Nov 10:00 IST.
    dispatched = datetime(2026, 11, 13, 3, 45, tzinfo=UTC)
    due = resend_time(dispatched, rule, "Asia/Kolkata", dispatched)
    assert due == datetime(2026, 11, 15, 4, 30, tzinfo=UTC)
    # Dispatched 13 Nov 11:00 IST: 15 Nov 11:00 is past ten, so 16 Nov 10:00 IST.
    later = datetime(2026, 11, 13, 5, 30, tzinfo=UTC)
    assert resend_time(later, rule, "Asia/Kolkata", later) == datetime(2026, 11, 16, 4, 30, tzinfo=UTC)
    # The same dispatch for someone in New York goes at ten New York time.
    assert resend_time(dispatched, rule, "America/New_York", dispatched) == datetime(2026, 11, 15, 15, 0, tzinfo=UTC)


@given(
    earliest=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)),
    minute=st.integers(min_value=0, max_value=24 * 60 - 1),
    zone=st.sampled_from(ZONES),
)
def test_the_next_local_time_is_the_first_one_at_or_after(earliest: datetime, minute: int, zone: str) -> None:
    at = next_local_time(earliest, minute, zone)
    assert at >= earliest
    # Within a day (plus a DST hour) of the earliest moment.
    assert at - earliest <= DAY + timedelta(hours=1)
    local = at.astimezone(ZoneInfo(zone))
    # Wall clock reads the minute, except when that minute does not exist that day (a spring-forward gap).
    gap = local.utcoffset() != (local - timedelta(hours=3)).utcoffset()
    assert (local.hour * 60 + local.minute == minute) or gap


@given(
    dispatched=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)),
    delay_hours=st.integers(min_value=1, max_value=24 * 7),
    late=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=20)),
    zone=st.sampled_from(ZONES),
)
def test_a_resend_is_never_early_and_never_far_past_its_local_time(
    dispatched: datetime, delay_hours: int, late: timedelta, zone: str
) -> None:
    rule = ResendRule(NOT_OPENED, delay_seconds=delay_hours * 3600, minute_of_day=10 * 60)
    on_time = next_local_time(dispatched + rule.delay, rule.minute_of_day, zone)
    now = on_time + late
    due = resend_time(dispatched, rule, zone, now)
    assert due >= dispatched + rule.delay
    if late <= GRACE:
        assert due == on_time
    else:
        # Missed (paused, down): the next ten o'clock after now, not a resend at whatever hour it is.
        assert now <= due <= now + DAY + timedelta(hours=1)


def test_no_resend_to_the_engaged_or_the_unreachable() -> None:
    at = datetime(2026, 11, 13, tzinfo=UTC)
    assert no_resend_reason({}, NOT_OPENED) is None
    assert no_resend_reason({"opened_at": at}, NOT_OPENED) == "opened"
    assert no_resend_reason({"clicked_at": at}, NOT_OPENED) == "clicked"
    # Opening is not clicking.
    assert no_resend_reason({"opened_at": at}, NOT_CLICKED) is None
    assert no_resend_reason({"clicked_at": at}, NOT_CLICKED) == "clicked"
    assert no_resend_reason({"opted_out_at": at, "opened_at": None}, NOT_CLICKED) == "opted_out"
    assert no_resend_reason({"bounced_at": at}, NOT_OPENED) == "bounced"
    assert no_resend_reason({"sent_at": at, "delivered_at": at}, NOT_OPENED) is None


def test_resend_settings_are_checked() -> None:
    assert validate_resend(NOT_OPENED, timedelta(days=2), "").minute_of_day == 600
    assert validate_resend(NOT_CLICKED, timedelta(hours=1), "18:30").minute_of_day == 18 * 60 + 30
    for condition, delay, time_of_day, field in (
        ("UNSPECIFIED", DAY, "", "campaign.resend.condition"),
        (NOT_OPENED, timedelta(minutes=59), "", "campaign.resend.delay"),
        (NOT_OPENED, DAY, "25:00", "campaign.resend.time_of_day"),
    ):
        with pytest.raises(InvalidArgument) as error:
            validate_resend(condition, delay, time_of_day)
        assert error.value.field == field
