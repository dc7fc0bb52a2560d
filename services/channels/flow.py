"""Flow control towards providers: token buckets, concurrency gates, backoff with jitter and quiet hours."""

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as clock_time
from zoneinfo import ZoneInfo


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; `take` says how long to wait for the next token.

    A token is reserved even when the caller has to wait for it, so callers queue in arrival
    order and the long-run rate never exceeds `rate`.
    """

    def __init__(self, rate: float, burst: float, *, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = now

    def take(self, now: float) -> float:
        """Reserves one token; returns the seconds to wait before using it (0 when one is available)."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


UNLIMITED_RATE = 1e12
"""A token bucket that never makes anyone wait: for a provider limited by its concurrency alone."""


class Throttle:
    """One provider's limits in this replica: at most `concurrency` calls at a time, at most `rate` a second."""

    def __init__(
        self,
        rate: float,
        burst: float,
        concurrency: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._bucket = TokenBucket(rate, burst, now=clock())
        self._slots = asyncio.Semaphore(concurrency)
        self.waiting = 0
        """Callers waiting for a free slot now."""

    @classmethod
    def of(cls, rate: float | None, concurrency: int) -> "Throttle":
        """At most `rate` calls a second (None: no rate, only the concurrency), bursts of a second's worth."""
        if rate is None:
            return cls(UNLIMITED_RATE, UNLIMITED_RATE, concurrency)
        return cls(rate, max(1.0, rate), concurrency)

    async def __aenter__(self) -> None:
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            wait = self._bucket.take(self._clock())
            if wait > 0:
                await self._sleep(wait)
        except BaseException:
            self._slots.release()
            raise

    async def __aexit__(self, *_: object) -> None:
        self._slots.release()


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter for transient provider failures."""

    base_seconds: float = 0.5
    cap_seconds: float = 300.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before attempt `attempt + 1`: half the exponential step fixed, half random ("equal jitter").

        The random half spreads the retries of a burst of failures so they do not hit the
        provider again in lock-step; the fixed half keeps the wait growing.
        """
        step = min(self.cap_seconds, self.base_seconds * 2 ** max(0, attempt - 1))
        return step / 2 + (rng or random).uniform(0, step / 2)


@dataclass(frozen=True)
class QuietHours:
    """A local-time window in which a channel does not send, e.g. 21:00-09:00 in Asia/Kolkata."""

    start: clock_time
    end: clock_time
    zone: ZoneInfo

    @classmethod
    def parse(cls, window: str, zone: str) -> "QuietHours":
        """`HH:MM-HH:MM`; the end may be earlier than the start (the window spans midnight)."""
        try:
            start, end = (clock_time.fromisoformat(part.strip()) for part in window.split("-"))
        except ValueError as error:
            raise ValueError(f"quiet hours {window!r} must look like 21:00-09:00") from error
        if start == end:
            raise ValueError(f"quiet hours {window!r} start and end at the same time")
        return cls(start, end, ZoneInfo(zone))

    def resumes_at(self, now: datetime) -> datetime | None:
        """When sending may resume if `now` (aware) is inside the window, else None."""
        local = now.astimezone(self.zone)
        at = local.time().replace(tzinfo=None)
        inside = self.start <= at < self.end if self.start < self.end else at >= self.start or at < self.end
        if not inside:
            return None
        resume = datetime.combine(local.date(), self.end, tzinfo=self.zone)
        if resume <= local:
            resume += timedelta(days=1)
        return resume

    def describe(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M} {self.zone.key}"
