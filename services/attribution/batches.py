"""Coalescing concurrent calls into batches: while one batch is applied, the calls that arrive queue for the next."""

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Queued(Generic[T, R]):
    """One call waiting in a batch: its input, the context it was made in (its span), and where its answer goes."""

    item: T
    context: contextvars.Context
    answer: asyncio.Future[R | None] = field(repr=False)


class Batches(Generic[T, R]):
    """Hands queued calls to `apply` in batches of at most `max_size`, one batch at a time.

    `apply` must settle every call of its batch: a result, an exception, or None for "apply this call on its own"
    (the caller then does). Under light load a batch holds one call; under heavy load a batch grows to what
    queued while the previous one ran, so the cost of a transaction is shared by many calls.
    """

    def __init__(self, apply: Callable[[list[Queued[T, R]]], Awaitable[None]], max_size: int = 200) -> None:
        self._apply = apply
        self.max_size = max_size
        self._queue: list[Queued[T, R]] = []
        self._wake = asyncio.Event()
        self._stopping = False

    async def submit(self, item: T) -> R | None:
        """The call's answer once its batch is applied; None when it is to be applied on its own."""
        answer: asyncio.Future[R | None] = asyncio.get_running_loop().create_future()
        self._queue.append(Queued(item, contextvars.copy_context(), answer))
        self._wake.set()
        return await answer

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._queue[: self.max_size]
                del self._queue[: self.max_size]
                try:
                    await self._apply(batch)
                except BaseException as error:
                    # A defect, not a call's error: its calls fail with it instead of waiting forever, and the
                    # loop dies with it (the process then reports NOT_SERVING).
                    for queued in batch:
                        if not queued.answer.done():
                            queued.answer.set_exception(error)
                    raise
                for queued in batch:
                    if not queued.answer.done():
                        raise RuntimeError("a batch left a call without an answer")
            if self._stopping:
                return

    async def stop(self) -> None:
        """Stops once the queued calls are applied (the server stops taking calls first)."""
        self._stopping = True
        self._wake.set()
