"""The rules of the views: local days, funnel levels, lag buckets, derived ratios and lift with its interval."""

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from fractions import Fraction
from statistics import NormalDist
from typing import Any

from services.attribution.revenue import romi, round_half_up
from services.attribution.rules import CONVERTED, FUNNEL_STEPS

LABEL_SEPARATOR = "\x1f"
"""Joins a campaign's labels into one column value; the unit separator never appears in a label people type."""

LAG_BUCKET_DAYS = (1, 3, 7, 14, 21, 30, 60)
"""Upper bounds (inclusive, in days) of the send → conversion lag buckets; a last bucket holds everything later.
The seed's journey takes 9 days and most take 14 to 21, so the buckets are finest there."""

MIN_GROUP_FOR_LIFT = 30
"""Below this many people in either group, the normal approximation behind the interval is not trusted."""


def local_day(at: datetime, utc_offset_minutes: int) -> str:
    """The day `at` falls on at the report's UTC offset, as YYYY-MM-DD."""
    return (at + timedelta(minutes=utc_offset_minutes)).strftime("%Y-%m-%d")


def day_of_number(day_number: int) -> str:
    """A day number (days since 1970-01-01, store.local_day_number) as YYYY-MM-DD."""
    return (date(1970, 1, 1) + timedelta(days=day_number)).isoformat()


def format_offset(utc_offset_minutes: int) -> str:
    sign = "+" if utc_offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(utc_offset_minutes), 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def labels_key(labels: Iterable[str]) -> str:
    """The labels as one value that a LIKE finds each label in: separator, sorted labels, separator."""
    unique = sorted({label for label in labels if label})
    return LABEL_SEPARATOR + LABEL_SEPARATOR.join(unique) + LABEL_SEPARATOR if unique else ""


def labels_of(key: str) -> list[str]:
    return [label for label in key.split(LABEL_SEPARATOR) if label]


def programme_of(campaign_id: str) -> str:
    """The programme part of a campaign ID (CSELL of CSELL-NOV-T06-0884)."""
    return campaign_id.split("-", 1)[0]


def lag_bucket(sent_at: datetime, converted_at: datetime) -> int:
    """The index of the lag bucket a conversion falls in; len(LAG_BUCKET_DAYS) for the open-ended last one."""
    days = (converted_at - sent_at).total_seconds() / 86_400
    for index, bound in enumerate(LAG_BUCKET_DAYS):
        if days <= bound:
            return index
    return len(LAG_BUCKET_DAYS)


def lag_bounds() -> list[tuple[int, int]]:
    """(min_days exclusive, max_days inclusive; 0 = open) of each bucket."""
    lower = (0, *LAG_BUCKET_DAYS)
    upper = (*LAG_BUCKET_DAYS, 0)
    return list(zip(lower, upper, strict=True))


def funnel_levels(steps: Mapping[str, datetime]) -> dict[str, datetime]:
    """When the outreach first reached each funnel level: the earliest time of that step or any later one.

    The funnel never widens downstream (rules.FUNNEL_STEPS), so a disbursement reached with no recorded
    open still counts as opened, on the day of the earliest later step.
    """
    levels: dict[str, datetime] = {}
    earliest: datetime | None = None
    for step in reversed(FUNNEL_STEPS):
        at = steps.get(step)
        if at is not None and (earliest is None or at < earliest):
            earliest = at
        if earliest is not None:
            levels[step] = earliest
    return levels


def funnel_column(step: str) -> str:
    return f"f_{step}"


LAG_COLUMNS = tuple(f"lag_{index}" for index in range(len(LAG_BUCKET_DAYS) + 1))
FUNNEL_COLUMNS = tuple(funnel_column(step) for step in FUNNEL_STEPS)
MONEY_COLUMNS = ("disbursed_paise", "lifetime_paise", "year1_paise", "cost_paise")
COUNTER_COLUMNS = ("sent", *FUNNEL_COLUMNS, *MONEY_COLUMNS, *LAG_COLUMNS)
"""Every additive column of a rollup row; a view is a sum of these."""


@dataclass
class Totals:
    """Sums of the rollup's counters; adding two gives the totals of both."""

    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_COLUMNS, 0))

    def add(self, other: Mapping[Any, Any]) -> None:
        for column in COUNTER_COLUMNS:
            self.counters[column] += int(other.get(column) or 0)

    @property
    def conversions(self) -> int:
        return self.counters[funnel_column(CONVERTED)]


@dataclass(frozen=True)
class Figures:
    """A view's figures with the ratios derived once, here."""

    sent: int
    conversions: int
    conversion_rate: float
    disbursed_paise: int
    lifetime_paise: int
    year1_paise: int
    cost_paise: int
    romi: float
    cost_per_conversion_paise: int
    funnel: dict[str, int]
    lag: list[int]


def figures(totals: Totals) -> Figures:
    c = totals.counters
    conversions = totals.conversions
    return Figures(
        sent=c["sent"],
        conversions=conversions,
        conversion_rate=conversions / c["sent"] if c["sent"] else 0.0,
        disbursed_paise=c["disbursed_paise"],
        lifetime_paise=c["lifetime_paise"],
        year1_paise=c["year1_paise"],
        cost_paise=c["cost_paise"],
        romi=romi(c["lifetime_paise"], c["cost_paise"]),
        cost_per_conversion_paise=round_half_up(Fraction(c["cost_paise"], conversions)) if conversions else 0,
        funnel={step: c[funnel_column(step)] for step in FUNNEL_STEPS},
        lag=[c[column] for column in LAG_COLUMNS],
    )


@dataclass(frozen=True)
class LiftResult:
    treated: int
    treated_conversions: int
    held_out: int
    held_out_conversions: int
    confidence: float
    treated_rate: float
    held_out_rate: float
    lift: float
    lift_low: float
    lift_high: float
    conclusive: bool
    statement: str


def wilson_interval(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval of a proportion (Wilson 1927); (0, 1) for an empty group."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _points(value: float) -> str:
    return f"{value * 100:.1f}"


def lift(
    treated: int, treated_conversions: int, held_out: int, held_out_conversions: int, confidence: float = 0.95
) -> LiftResult:
    """The difference in conversion rate, treated minus held out, with Newcombe's hybrid score interval.

    Newcombe (1998), method 10: each rate gets its Wilson interval (l, u), and for d = p1 - p2
        low  = d - sqrt((p1 - l1)² + (u2 - p2)²)
        high = d + sqrt((u1 - p1)² + (p2 - l2)²)
    It behaves well with small counts and rates near 0, where the plain normal approximation does not.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, e.g. 0.95; got {confidence}")
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    p1 = treated_conversions / treated if treated else 0.0
    p2 = held_out_conversions / held_out if held_out else 0.0
    l1, u1 = wilson_interval(treated_conversions, treated, z)
    l2, u2 = wilson_interval(held_out_conversions, held_out, z)
    difference = p1 - p2
    low = difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    level = f"{confidence * 100:g}%"
    rates = f"{_points(p1)}% of {treated:,} reached converted against {_points(p2)}% of {held_out:,} held out"
    conclusive = False
    if held_out == 0:
        statement = "No one was held out, so lift cannot be measured; give the campaign a holdout."
    elif treated == 0:
        statement = "No one was reached yet, so lift cannot be measured."
    elif treated < MIN_GROUP_FOR_LIFT or held_out < MIN_GROUP_FOR_LIFT:
        statement = (
            f"Too small a sample to say: {treated:,} reached and {held_out:,} held out; "
            f"lift needs at least {MIN_GROUP_FOR_LIFT} people in each group."
        )
    elif low > 0 or high < 0:
        conclusive = True
        direction = "raised" if difference > 0 else "lowered"
        statement = (
            f"Reaching people {direction} conversion by {_points(abs(difference))} points "
            f"({level} interval {_points(low)} to {_points(high)}): {rates}."
        )
    else:
        statement = (
            f"No measurable lift yet: {rates}; the {level} interval ({_points(low)} to {_points(high)} points) "
            "includes zero."
        )
    return LiftResult(
        treated=treated,
        treated_conversions=treated_conversions,
        held_out=held_out,
        held_out_conversions=held_out_conversions,
        confidence=confidence,
        treated_rate=p1,
        held_out_rate=p2,
        lift=difference,
        lift_low=low,
        lift_high=high,
        conclusive=conclusive,
        statement=statement,
    )
