"""How late a process's event loop runs a timer: the time something held the loop (a long statement, a collector
pass, a commit that checkpointed), as the histogram xsell.event_loop.lag an operator can watch."""

import asyncio

from opentelemetry import metrics

from plumbing.metrics import meter

TICK_SECONDS = 0.1
"""How often the loop is asked to run the timer: ten readings a second, ~0.2 ms of CPU."""

BUCKETS_MS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 1000.0, 5000.0)
"""Upper bounds of the histogram's buckets: a healthy loop's readings fall under 1 ms, a stall of the size that makes a
p99 (a checkpointing commit, a collector pass) in 5-20 ms, a loop blocked by a call that should not be on it above."""


class LoopLag:
    """A background loop (BackgroundTask's run and stop) that records, every TICK_SECONDS, how long after it was due the
    loop ran the timer."""

    def __init__(self, tick: float = TICK_SECONDS, *, meter_: metrics.Meter | None = None) -> None:
        self.tick = tick
        self._stopping = False
        self._lag = (meter_ or meter()).create_histogram(
            "xsell.event_loop.lag",
            unit="ms",
            description="How late the event loop ran a timer due every 100 ms: how long work held the loop then.",
            explicit_bucket_boundaries_advisory=BUCKETS_MS,
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            due = loop.time() + self.tick
            await asyncio.sleep(self.tick)
            self._lag.record(max(0.0, loop.time() - due) * 1000)

    async def stop(self) -> None:
        """Ends run() at its next reading (within one tick)."""
        self._stopping = True
