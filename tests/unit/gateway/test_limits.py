"""The token bucket: a burst, then one call per 1/rate seconds, per key; the key's own limit before the default."""

import pytest

from gateway.limits import RateLimit, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_second=2, burst=3), clock=clock)
    assert [limiter.take("k1", None) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("k1", None) == pytest.approx(0.5)
    clock.now += 0.25
    assert limiter.take("k1", None) == pytest.approx(0.25), "a refused call spends nothing"
    clock.now += 0.25
    assert limiter.take("k1", None) == 0.0
    assert limiter.take("k1", None) > 0
    clock.now += 60
    assert [limiter.take("k1", None) for _ in range(4)].count(0.0) == 3, "refill stops at the burst"


def test_each_key_has_its_own_bucket_and_its_own_limit_wins() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_second=1, burst=1), clock=clock)
    assert limiter.take("k1", None) == 0.0
    assert limiter.take("k1", None) > 0
    assert limiter.take("k2", None) == 0.0, "another key is not slowed by the first"
    generous = RateLimit(per_second=100, burst=5)
    assert [limiter.take("k3", generous) for _ in range(5)] == [0.0] * 5
    assert limiter.take("k3", generous) == pytest.approx(0.01)


def test_a_lowered_limit_applies_at_once_and_no_default_means_unlimited() -> None:
    clock = Clock()
    limiter = RateLimiter(None, clock=clock)
    assert all(limiter.take("k1", None) == 0.0 for _ in range(10_000))
    assert limiter.take("k2", RateLimit(per_second=1, burst=100)) == 0.0
    lowered = RateLimit(per_second=1, burst=1)
    assert [limiter.take("k2", lowered) > 0 for _ in range(3)] == [False, True, True], "99 saved tokens shrink to 1"


def test_a_limit_must_let_something_through() -> None:
    with pytest.raises(ValueError, match="positive rate"):
        RateLimit(per_second=0, burst=1)
    with pytest.raises(ValueError, match="burst of at least 1"):
        RateLimit(per_second=1, burst=0)
    assert str(RateLimit(2.5, 5)) == "2.5 calls/s (bursts of 5)"
