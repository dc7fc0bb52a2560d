"""The polling loop of a background task: a step now, then every interval (sooner when woken), until stopped."""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("plumbing.polling")


class Poller:
    """Calls `step` until stopped, `interval` seconds apart or as soon as `wake` is called. A step that raises one of
    `retried` is logged as `failure_event` and the loop goes on (the database or a peer is unreachable: the next
    step covers the same work again); anything else ends the loop, and the task with it."""

    def __init__(
        self,
        step: Callable[[], Awaitable[object]],
        interval: float,
        failure_event: str,
        *,
        retried: tuple[type[Exception], ...] = (Exception,),
    ) -> None:
        self.step = step
        self.interval = interval
        self.failure_event = failure_event
        self.retried = retried
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    @property
    def stopping(self) -> bool:
        """Whether stop was called: a step working through pages returns early."""
        return self._stopping.is_set()

    def wake(self) -> None:
        """The next step now, not at the end of the interval (work just became due)."""
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                await self.step()
            except self.retried as error:
                log.warning(self.failure_event, error=repr(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)

    async def stop(self) -> None:
        """Stops after the step in flight."""
        self._stopping.set()
        self._wake.set()
