"""Group commit: concurrent calls share one transaction, so its fixed cost is paid once per batch, not per call.

A caller submits its item and waits. While a batch is being written, the items that arrive queue for the
next one: alone, an item waits only for its own transaction; under load each transaction carries everything
that queued during the previous one. On SQLite, with its one writer, this is what lets many small calls a
second through; on PostgreSQL it saves the per-transaction round trips and commits.
"""

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from opentelemetry import trace

T = TypeVar("T")
R = TypeVar("R")


class Alone:
    def __repr__(self) -> str:
        return "ALONE"


ALONE: Final = Alone()
"""What a batch answers for an item it leaves to be applied on its own (e.g. one that depends on another
item of the same batch); the caller then applies it with the `alone` function."""


@dataclass(frozen=True)
class Submitted(Generic[T]):
    """One waiting call: its item, and its caller's context (its span), in which to build what belongs to its
    trace, such as the outbox events it causes: `submitted.context.run(outbox.event, ...)`."""

    item: T
    context: contextvars.Context


Write = Callable[[Sequence[Submitted[T]]], Coroutine[Any, Any, Sequence[R | Alone | BaseException]]]


class GroupCommit(Generic[T, R]):
    """Hands submitted items to `write` in batches of at most `max_batch`, one batch at a time.

    `write` answers every item of its batch, in order: a result, an exception for that item alone (the
    caller raises it), or ALONE. When `write` itself raises, a batch of one raises to its caller; a larger
    batch has each of its items applied on its own with `alone` when it is given (so one bad item does not
    fail its batch-mates), or raises to every caller when it is not. An error of one of the `alone_after` types
    sends even a batch of one to `alone`: a unique-key race lost to another process (a concurrent duplicate of a
    request_id), after which the item alone finds the winner's answer.
    """

    def __init__(
        self,
        name: str,
        write: Write[T, R],
        *,
        max_batch: int = 200,
        alone: Callable[[T], Awaitable[R]] | None = None,
        tracer: trace.Tracer | None = None,
        alone_after: tuple[type[BaseException], ...] = (),
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.name = name
        self.max_batch = max_batch
        self._write = write
        self._alone = alone
        self._alone_after = alone_after
        self._tracer = tracer or trace.get_tracer(__name__)
        self._pending: list[tuple[Submitted[T], asyncio.Future[R | Alone | BaseException]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """The item's result once its batch has committed."""
        future: asyncio.Future[R | Alone | BaseException] = asyncio.get_running_loop().create_future()
        self._pending.append((Submitted(item, contextvars.copy_context()), future))
        if self._writer is None or self._writer.done():
            # The writer belongs to no caller's trace: it runs in an empty context.
            self._writer = asyncio.create_task(
                self._drain(), name=f"group-commit-{self.name}", context=contextvars.Context()
            )
        outcome = await future
        if isinstance(outcome, Alone):
            if self._alone is None:
                raise RuntimeError(f"group commit {self.name} left an item alone but has no alone function")
            return await self._alone(item)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _write_traced(self, batch: list[Submitted[T]]) -> Sequence[R | Alone | BaseException]:
        """A batch of one is written in its caller's context, so its spans and events stay in the caller's
        trace; a larger batch gets a span of its own, linked to every caller's span."""
        if len(batch) == 1:
            return await asyncio.create_task(self._write(batch), context=batch[0].context.copy())
        links = [trace.Link(submitted.context.run(trace.get_current_span).get_span_context()) for submitted in batch]
        with self._tracer.start_as_current_span(f"{self.name} batch", links=links) as span:
            span.set_attribute("group_commit.items", len(batch))
            return await self._write(batch)

    async def _drain(self) -> None:
        # One turn of the loop first, so calls that arrived together join the first batch.
        await asyncio.sleep(0)
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            try:
                outcomes = await self._write_traced([submitted for submitted, _ in batch])
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"group commit {self.name} answered {len(outcomes)} of {len(batch)} items")
            except asyncio.CancelledError:
                # Stopped mid-write: the transaction rolled back; no caller may wait for an answer that never comes.
                for _, future in [*batch, *self._pending]:
                    future.cancel()
                self._pending = []
                raise
            except Exception as error:  # noqa: BLE001 - handed to the batch's callers, who raise it or go alone
                apart = len(batch) > 1 or isinstance(error, self._alone_after)
                failed: Alone | BaseException = ALONE if apart and self._alone is not None else error
                for _, future in batch:
                    if not future.done():
                        future.set_result(failed)
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)


Apply = Callable[[Any, Sequence[tuple[T, contextvars.Context]]], Sequence[R | BaseException]]
"""Applies items (each with its caller's context) in one synchronous session, answering each in order: its result,
or an exception that is its own (its other items still apply)."""


def synchronous_batches(
    run_in_transaction: Callable[[Callable[[Any], Any]], Awaitable[Any]], apply: Apply[T, R]
) -> tuple[Write[T, R], Callable[[T], Awaitable[R]]]:
    """The `write` and `alone` of a GroupCommit whose every batch is one synchronous transaction
    (Database.run_in_transaction: on SQLite one call to its writer thread), both applying with `apply`."""

    async def write(batch: Sequence[Submitted[T]]) -> list[R | Alone | BaseException]:
        items = [(submitted.item, submitted.context) for submitted in batch]
        answers: list[R | Alone | BaseException] = []
        answers += await run_in_transaction(lambda session: apply(session, items))
        return answers

    async def alone(item: T) -> R:
        items = [(item, contextvars.copy_context())]
        [answer] = await run_in_transaction(lambda session: apply(session, items))
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[no-any-return]

    return write, alone
