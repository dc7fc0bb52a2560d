"""Per-key request rate limits: a token bucket per API key, refilled continuously at the key's rate."""

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimit:
    """`per_second` calls per second on average, with bursts of up to `burst` calls."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")

    def __str__(self) -> str:
        return f"{self.per_second:g} calls/s (bursts of {self.burst})"


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """One bucket per key id. Keys are authenticated before they get a bucket, so memory is bounded by issued keys."""

    def __init__(self, default: RateLimit | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._default = default
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def limit_for(self, own: RateLimit | None) -> RateLimit | None:
        """The key's own limit, else the default; None means unlimited."""
        return own or self._default

    def take(self, key_id: str, own: RateLimit | None) -> float:
        """Spends one token: 0.0 when the call may go ahead, else the seconds until the next token."""
        limit = self.limit_for(own)
        if limit is None:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = _Bucket(float(limit.burst), now)
        # A changed limit takes effect at once: never more tokens than the current burst.
        bucket.tokens = min(float(limit.burst), bucket.tokens + (now - bucket.updated) * limit.per_second)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / limit.per_second
