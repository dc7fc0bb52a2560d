"""The views' rules without I/O: funnel levels, lag buckets, labels, derived ratios, and lift's interval."""

from datetime import UTC, datetime, timedelta

import pytest

from services.attribution.reporting import (
    Totals,
    figures,
    funnel_levels,
    labels_key,
    labels_of,
    lag_bucket,
    lift,
    local_day,
    programme_of,
    wilson_interval,
)

T0 = datetime(2025, 11, 13, 3, 45, tzinfo=UTC)


def test_a_later_step_reaches_every_level_before_it_at_its_time() -> None:
    levels = funnel_levels({"sent": T0, "clicked": T0 + timedelta(hours=5)})
    assert levels == {
        "sent": T0,
        "delivered": T0 + timedelta(hours=5),
        "opened": T0 + timedelta(hours=5),
        "clicked": T0 + timedelta(hours=5),
    }
    earlier_open = funnel_levels({"sent": T0, "clicked": T0 + timedelta(hours=5), "opened": T0 + timedelta(hours=1)})
    assert earlier_open["delivered"] == T0 + timedelta(hours=1)


def test_days_are_counted_at_the_report_offset() -> None:
    assert local_day(datetime(2025, 11, 13, 18, 29, tzinfo=UTC), 330) == "2025-11-13"
    assert local_day(datetime(2025, 11, 13, 18, 30, tzinfo=UTC), 330) == "2025-11-14"


def test_lag_buckets_and_labels_and_programme() -> None:
    assert lag_bucket(T0, T0 + timedelta(days=1)) == 0
    assert lag_bucket(T0, T0 + timedelta(days=9)) == 3  # the seed's journey: 7–14 days
    assert lag_bucket(T0, T0 + timedelta(days=61)) == 7
    key = labels_key(["b", "a", "a", ""])
    assert key == "\x1fa\x1fb\x1f" and labels_of(key) == ["a", "b"]
    assert labels_key([]) == ""
    assert programme_of("CSELL-NOV-T06-0884") == "CSELL"


def test_the_worked_example_figures() -> None:
    totals = Totals()
    totals.add({"sent": 1, "f_disbursed": 1, "disbursed_paise": 174_000_000, "lifetime_paise": 45_240_000})
    totals.add({"cost_paise": 9_800, "year1_paise": 4_524_000})
    result = figures(totals)
    assert (result.conversions, result.conversion_rate) == (1, 1.0)
    assert result.romi == pytest.approx(4616.33, abs=0.01)
    assert result.cost_per_conversion_paise == 9_800
    assert figures(Totals()).cost_per_conversion_paise == 0


def test_wilson_and_newcombe_match_the_published_example() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873, table II example (e): 56/70 vs 48/80.
    low, high = wilson_interval(56, 70, 1.959964)
    assert (round(low, 4), round(high, 4)) == (0.6918, 0.8770)
    result = lift(70, 56, 80, 48)
    assert result.lift == pytest.approx(0.2)
    assert (round(result.lift_low, 4), round(result.lift_high, 4)) == (0.0524, 0.3339)
    assert result.conclusive
    assert "raised conversion by 20.0 points" in result.statement


def test_lift_says_plainly_when_it_cannot_say() -> None:
    assert lift(100, 10, 0, 0).statement.startswith("No one was held out")
    small = lift(12, 3, 5, 0)
    assert not small.conclusive and small.statement.startswith("Too small a sample to say: 12 reached and 5 held out")
    flat = lift(200, 20, 200, 18)
    assert not flat.conclusive and flat.lift_low < 0 < flat.lift_high
    assert flat.statement.startswith("No measurable lift yet")
    with pytest.raises(ValueError):
        lift(10, 1, 10, 1, confidence=1.5)


def test_activated_is_a_funnel_step_after_the_conversion_and_not_a_second_conversion() -> None:
    totals = Totals()
    totals.add({"sent": 2, "f_disbursed": 2, "f_activated": 1})
    result = figures(totals)
    assert result.conversions == 2
    assert list(result.funnel)[-2:] == ["disbursed", "activated"]
    assert result.funnel["activated"] == 1
