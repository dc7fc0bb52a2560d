"""When a campaign sends: recurring occurrences, staggered release steps, quiet hours and the automatic-pause rule."""

import math
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from plumbing.errors import InvalidArgument

_HH_MM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
MIN_INTERVAL_SECONDS = 60
MAX_HOLDOUT_BASIS_POINTS = 5000
DEFAULT_MIN_RELEASED = 100
FREQUENCIES = ("DAILY", "WEEKLY", "MONTHLY")


def parse_hh_mm(value: str, field_name: str) -> int:
    """Minutes after midnight of "HH:MM"; InvalidArgument otherwise."""
    match = _HH_MM.match(value)
    if match is None:
        raise InvalidArgument(
            f"{field_name} {value!r} must be HH:MM on a 24-hour clock, e.g. '21:00'", field=field_name
        )
    return int(match.group(1)) * 60 + int(match.group(2))


@dataclass(frozen=True)
class Recurrence:
    """A five-field cron expression read in the campaign's time zone, and an optional end."""

    cron: str
    end: datetime | None = None


def recurrence_cron(
    frequency: str, time_of_day: str, day_of_week: int, day_of_month: int, cron: str, field_prefix: str
) -> str:
    """The cron expression of a recurrence given either as a frequency or as cron; InvalidArgument if neither fits."""
    if cron:
        if frequency:
            raise InvalidArgument(
                "give either recurrence.cron or recurrence.frequency, not both", field=f"{field_prefix}.cron"
            )
        if len(cron.split()) != 5 or not croniter.is_valid(cron):
            raise InvalidArgument(
                f"recurrence.cron {cron!r} is not a five-field cron expression, e.g. '30 9 * * 1-5' "
                "(minute hour day-of-month month day-of-week)",
                field=f"{field_prefix}.cron",
            )
        return cron
    if frequency not in FREQUENCIES:
        raise InvalidArgument(
            "recurrence.frequency must be DAILY, WEEKLY or MONTHLY (or give recurrence.cron)",
            field=f"{field_prefix}.frequency",
        )
    minutes = parse_hh_mm(time_of_day or "09:00", f"{field_prefix}.time_of_day")
    hour, minute = divmod(minutes, 60)
    if frequency == "DAILY":
        return f"{minute} {hour} * * *"
    if frequency == "WEEKLY":
        if not 1 <= day_of_week <= 7:
            raise InvalidArgument(
                "recurrence.day_of_week must be 1 (Monday) to 7 (Sunday) for a WEEKLY campaign",
                field=f"{field_prefix}.day_of_week",
            )
        return f"{minute} {hour} * * {day_of_week % 7}"
    if not 1 <= day_of_month <= 28:
        raise InvalidArgument(
            "recurrence.day_of_month must be 1 to 28 for a MONTHLY campaign, so every month has it",
            field=f"{field_prefix}.day_of_month",
        )
    return f"{minute} {hour} {day_of_month} * *"


def next_occurrence(recurrence: Recurrence, time_zone: str, after: datetime) -> datetime | None:
    """The first occurrence strictly after `after`, in UTC; None once past the recurrence's end.

    Computed on local wall-clock time, so "09:00 daily" stays 09:00 across DST changes of the zone.
    """
    local_after = after.astimezone(ZoneInfo(time_zone))
    nxt: datetime = croniter(recurrence.cron, local_after).get_next(datetime)
    occurrence = nxt.astimezone(ZoneInfo("UTC"))
    if recurrence.end is not None and occurrence >= recurrence.end:
        return None
    return occurrence


@dataclass(frozen=True)
class Distribution:
    """percent of the run's audience every interval; 100 releases at once."""

    percent_per_step: int = 100
    interval_seconds: int = 0

    def step_size(self, total: int) -> int:
        """Outreaches per step: ceil(total x percent / 100), at least 1."""
        return max(1, math.ceil(total * self.percent_per_step / 100))


@dataclass(frozen=True)
class QuietHours:
    """Minutes after local midnight; when start > end the quiet hours span midnight (21:00-09:00)."""

    start_minute: int
    end_minute: int

    def release_time(self, moment: datetime, time_zone: str) -> datetime:
        """`moment` if it is outside quiet hours in `time_zone`, else the end of the quiet hours (UTC)."""
        zone = ZoneInfo(time_zone)
        local = moment.astimezone(zone)
        minute = local.hour * 60 + local.minute
        start, end = self.start_minute, self.end_minute
        if start == end:
            return moment
        quiet = start <= minute < end if start < end else (minute >= start or minute < end)
        if not quiet:
            return moment
        end_day = local.date() if minute < end else local.date() + timedelta(days=1)
        end_local = datetime.combine(end_day, time(end // 60, end % 60), tzinfo=zone)
        return end_local.astimezone(ZoneInfo("UTC"))

    def describe(self, time_zone: str) -> str:
        """Why an outreach waits, in words: "the campaign's quiet hours 21:00-09:00 in Asia/Kolkata"."""
        start, end = divmod(self.start_minute, 60), divmod(self.end_minute, 60)
        return f"the campaign's quiet hours {start[0]:02d}:{start[1]:02d}-{end[0]:02d}:{end[1]:02d} in {time_zone}"


@dataclass(frozen=True)
class AutoPause:
    """Rates over the released part of a run above which the campaign pauses itself; 0 disables a rate."""

    max_bounce_rate: float = 0.0
    max_complaint_rate: float = 0.0
    max_opt_out_rate: float = 0.0
    min_released: int = DEFAULT_MIN_RELEASED
    max_failure_rate: float = 0.0

    def breach(self, released: int, bounced: int, complained: int, opted_out: int, failed: int = 0) -> str | None:
        """The reason to pause ("bounce rate 0.12 >= 0.05"), or None; judged once min_released are released."""
        if released <= 0 or released < self.min_released:
            return None
        for name, count, limit in (
            ("bounce", bounced, self.max_bounce_rate),
            ("complaint", complained, self.max_complaint_rate),
            ("opt-out", opted_out, self.max_opt_out_rate),
            ("failure", failed, self.max_failure_rate),
        ):
            rate = count / released
            if limit > 0 and rate >= limit:
                return f"{name} rate {rate:.3f} >= {limit:.3f} over {released} released outreaches"
        return None


@dataclass(frozen=True)
class FrequencyCapRule:
    """At most max_outreaches per person per period (DAY / WEEK) within scope (ALL / CHANNEL / CATEGORY)."""

    scope: str
    period: str
    max_outreaches: int


@dataclass(frozen=True)
class DeliveryOptions:
    """Everything about when and to whom beyond the segment: stored as JSON on the campaign."""

    recurrence: Recurrence | None = None
    distribution: Distribution = field(default_factory=Distribution)
    quiet_hours: QuietHours | None = None
    auto_pause: AutoPause | None = None
    frequency_caps: tuple[FrequencyCapRule, ...] = ()
    priority: int = 0
    holdout_basis_points: int = 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.recurrence is not None and self.recurrence.end is not None:
            data["recurrence"]["end"] = self.recurrence.end.isoformat()
        data["frequency_caps"] = [asdict(cap) for cap in self.frequency_caps]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "DeliveryOptions":
        """The options of a campaigns row's `options`. The last one parsed is kept with the very dict it came from
        (held, so its identity is not reused): a trigger batch asks three times for the same row's."""
        if not data:
            return cls()
        global _last_parsed
        last = _last_parsed
        if last is not None and last[0] is data:
            return last[1]
        parsed = cls._parsed(data)
        _last_parsed = (data, parsed)
        return parsed

    @classmethod
    def _parsed(cls, data: dict[str, Any]) -> "DeliveryOptions":
        recurrence = None
        if data.get("recurrence"):
            end = data["recurrence"].get("end")
            recurrence = Recurrence(data["recurrence"]["cron"], datetime.fromisoformat(end) if end else None)
        return cls(
            recurrence=recurrence,
            distribution=Distribution(**data.get("distribution") or {}),
            quiet_hours=QuietHours(**data["quiet_hours"]) if data.get("quiet_hours") else None,
            auto_pause=AutoPause(**data["auto_pause"]) if data.get("auto_pause") else None,
            frequency_caps=tuple(FrequencyCapRule(**cap) for cap in data.get("frequency_caps") or ()),
            priority=int(data.get("priority", 0)),
            holdout_basis_points=int(data.get("holdout_basis_points", 0)),
        )


def validate_distribution(percent: int, interval_seconds: int) -> Distribution:
    if percent in (0, 100):
        return Distribution()
    if not 1 <= percent <= 100:
        raise InvalidArgument(
            "distribution.percent_per_step must be 1 to 100, e.g. 10 for the recipe's 10% an hour",
            field="campaign.distribution.percent_per_step",
        )
    if interval_seconds < MIN_INTERVAL_SECONDS:
        raise InvalidArgument(
            "distribution.interval must be at least one minute, e.g. 3600s for one step an hour",
            field="campaign.distribution.interval",
        )
    return Distribution(percent, interval_seconds)


def validate_rates(
    max_bounce: float, max_complaint: float, max_opt_out: float, min_released: int, max_failure: float = 0.0
) -> AutoPause:
    for name, value in (
        ("max_bounce_rate", max_bounce),
        ("max_complaint_rate", max_complaint),
        ("max_opt_out_rate", max_opt_out),
        ("max_failure_rate", max_failure),
    ):
        if not 0 <= value <= 1:
            raise InvalidArgument(
                f"auto_pause.{name} must be between 0 and 1, e.g. 0.05 for 5%", field=f"campaign.auto_pause.{name}"
            )
    if min_released < 0:
        raise InvalidArgument("auto_pause.min_released must not be negative", field="campaign.auto_pause.min_released")
    return AutoPause(
        max_bounce, max_complaint, max_opt_out, min_released or DEFAULT_MIN_RELEASED, max_failure_rate=max_failure
    )


def validate_holdout(basis_points: int) -> int:
    if not 0 <= basis_points <= MAX_HOLDOUT_BASIS_POINTS:
        raise InvalidArgument(
            f"holdout_basis_points must be 0 to {MAX_HOLDOUT_BASIS_POINTS} "
            "(100 = 1%, e.g. 1000 for a 10% control group)",
            field="campaign.holdout_basis_points",
        )
    return basis_points


def recipient_time_zone(value: object, campaign_time_zone: str) -> str:
    """The person's `time_zone` attribute when it names an IANA zone, else the campaign's."""
    if isinstance(value, str) and value:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            return campaign_time_zone
        return value
    return campaign_time_zone


_last_parsed: tuple[dict[str, Any], DeliveryOptions] | None = None
