"""bench.service.loop_lag: what a process's loop-lag histogram says about the readings taken between two scrapes."""

import math

from bench.service import loop_lag

BOUNDS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 1000.0, 5000.0, math.inf)


def cumulative(counts: list[int]) -> dict[float, int]:
    """Readings per bucket (one count per bound) as the histogram keeps them: at or under each bound."""
    total, out = 0, {}
    for bound, count in zip(BOUNDS, counts, strict=True):
        total += count
        out[bound] = total
    return out


def test_only_the_readings_between_the_scrapes_count() -> None:
    before = cumulative([500, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    # Since then: 90 quick readings, 5 of 5-10 ms, 4 of 10-20 ms, one of 20-50 ms.
    after = cumulative([580, 20, 0, 0, 5, 4, 1, 0, 0, 0, 0, 0])
    summary = loop_lag(before, after)
    assert summary == {
        "readings": 100,
        "over_5_ms": 10,
        "over_20_ms": 1,
        "p50_at_most_ms": 0.5,
        "p99_at_most_ms": 20.0,
        "max_at_most_ms": 50.0,
    }


def test_no_reading_between_the_scrapes_says_so() -> None:
    same = cumulative([5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    assert loop_lag(same, same)["readings"] == 0
    assert loop_lag(same, same)["p99_at_most_ms"] is None
