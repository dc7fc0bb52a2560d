"""The campaigns bench's arithmetic: nearest-rank percentiles of latencies (pure, no timing)."""

from bench.campaigns import percentile


def test_percentile_is_the_nearest_rank_rounded_to_hundredths() -> None:
    samples = [float(n) + 0.004 for n in range(1, 101)]
    assert percentile(samples, 0.50) == 51.0
    assert percentile(samples, 0.99) == 100.0
    assert percentile([3.456], 0.99) == 3.46


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 0.5) is None
