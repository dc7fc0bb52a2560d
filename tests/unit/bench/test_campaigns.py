"""The campaigns bench's arithmetic (nearest-rank percentiles of latencies, pure, no timing) and its options."""

import pytest

from bench.campaigns import main, percentile


def test_percentile_is_the_nearest_rank_rounded_to_hundredths() -> None:
    samples = [float(n) + 0.004 for n in range(1, 101)]
    assert percentile(samples, 0.50) == 51.0
    assert percentile(samples, 0.99) == 100.0
    assert percentile([3.456], 0.99) == 3.46


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 0.5) is None


async def test_postgresql_refuses_the_release_part_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        await main(["--backend", "postgresql", "--parts", "trigger,release"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--backend postgresql does not run release" in error
    assert "it runs trigger" in error
