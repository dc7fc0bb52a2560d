"""Automatic resends: who gets one, and when, in the recipient's local time."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from plumbing.errors import InvalidArgument
from services.campaigns.scheduling import parse_hh_mm

NOT_OPENED = "NOT_OPENED"
NOT_CLICKED = "NOT_CLICKED"
CONDITIONS = (NOT_OPENED, NOT_CLICKED)
DEFAULT_TIME_OF_DAY = 10 * 60
MIN_DELAY = timedelta(hours=1)
GRACE = timedelta(hours=1)
"""A resend that could not go within this long after its local time (a pause, an outage) waits for the next day's."""

RESENT = "resent"
# What the original's signals say, checked in this order; any of them means no resend.
_ENDED = (
    ("bounced_at", "bounced"),
    ("failed_at", "failed"),
    ("complained_at", "complained"),
    ("opted_out_at", "opted_out"),
)
_ENGAGED = {
    NOT_OPENED: (("opened_at", "opened"), ("clicked_at", "clicked"), ("replied_at", "replied")),
    NOT_CLICKED: (("clicked_at", "clicked"), ("replied_at", "replied")),
}


@dataclass(frozen=True)
class ResendRule:
    """Resend once to those who did not open / click, `delay_seconds` after dispatch, at a local minute of day."""

    condition: str = NOT_OPENED
    delay_seconds: int = 2 * 24 * 3600
    minute_of_day: int = DEFAULT_TIME_OF_DAY

    @property
    def delay(self) -> timedelta:
        return timedelta(seconds=self.delay_seconds)


def validate_resend(condition: str, delay: timedelta, time_of_day: str) -> ResendRule:
    if condition not in CONDITIONS:
        raise InvalidArgument("resend.condition must be NOT_OPENED or NOT_CLICKED", field="campaign.resend.condition")
    if delay < MIN_DELAY:
        raise InvalidArgument(
            "resend.delay must be at least one hour, e.g. 172800s for two days", field="campaign.resend.delay"
        )
    minute = parse_hh_mm(time_of_day, "campaign.resend.time_of_day") if time_of_day else DEFAULT_TIME_OF_DAY
    return ResendRule(condition, int(delay.total_seconds()), minute)


def next_local_time(earliest: datetime, minute_of_day: int, time_zone: str) -> datetime:
    """The first instant at or after `earliest` whose wall clock in `time_zone` reads minute_of_day (UTC)."""
    zone = ZoneInfo(time_zone)
    local = earliest.astimezone(zone)
    at = time(minute_of_day // 60, minute_of_day % 60)
    for days in range(3):
        candidate = datetime.combine(local.date() + timedelta(days=days), at, tzinfo=zone)
        if candidate.astimezone(ZoneInfo("UTC")) >= earliest:
            return candidate.astimezone(ZoneInfo("UTC"))
    raise AssertionError("a local time of day recurs within three days")  # pragma: no cover


def resend_time(dispatched_at: datetime, rule: ResendRule, time_zone: str, now: datetime) -> datetime:
    """When the resend of an outreach dispatched at `dispatched_at` goes.

    The first local time of day at or after dispatch + delay; if that passed more than GRACE ago
    (the campaign was paused, the service was down), the next occurrence of that local time after now.
    """
    due = next_local_time(dispatched_at + rule.delay, rule.minute_of_day, time_zone)
    if now > due + GRACE:
        return next_local_time(now, rule.minute_of_day, time_zone)
    return due


def no_resend_reason(signals: Mapping[str, datetime | None], condition: str) -> str | None:
    """Why the original gets no resend (it bounced, failed, was complained about, opted out, or was engaged
    with), or None when it gets one."""
    for column, reason in (*_ENDED, *_ENGAGED[condition]):
        if signals.get(column) is not None:
            return reason
    return None
