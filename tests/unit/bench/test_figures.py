"""The bench's arithmetic: percentiles and sustained-rate windows (pure functions, no timing)."""

from bench.figures.live import _percentile, _windows


def test_percentile_picks_the_nearest_rank() -> None:
    samples = [float(n) for n in range(1, 101)]
    assert _percentile(samples, 0.50) == 51.0
    assert _percentile(samples, 0.99) == 99.0
    assert _percentile([3.0], 0.99) == 3.0
    assert _percentile([], 0.5) != _percentile([], 0.5)  # NaN when there is nothing to rank


def test_windows_count_events_per_second_and_drop_the_partial_last_window() -> None:
    started = 100.0
    completions = [(101.0, 1000), (104.0, 1000), (106.0, 3000), (111.0, 500)]
    assert _windows(completions, started, width=5.0) == [400.0, 600.0]
    assert _windows([], started) == []
