"""Concurrent submissions share a batch; each caller gets its own answer, its own error, or goes alone."""

import asyncio
import contextvars
from collections.abc import Sequence

import pytest
from opentelemetry import trace

from plumbing.group_commit import ALONE, Alone, GroupCommit, Submitted, synchronous_batches

caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="none")


def _answer(item: int) -> str:
    return f"{caller.get()}:{item * 10}"


class Recorder:
    def __init__(self, fail_batches_over: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.alone: list[int] = []
        self.fail_batches_over = fail_batches_over

    async def write(self, batch: Sequence[Submitted[int]]) -> list[str | Alone | BaseException]:
        self.batches.append([s.item for s in batch])
        await asyncio.sleep(0.01)  # a transaction in flight: later submissions queue for the next batch
        if self.fail_batches_over is not None and len(batch) > self.fail_batches_over:
            raise RuntimeError("the batch's transaction failed")
        outcomes: list[str | Alone | BaseException] = []
        for submitted in batch:
            if submitted.item < 0:
                outcomes.append(ValueError(f"item {submitted.item} is negative"))
            elif submitted.item == 0:
                outcomes.append(ALONE)
            else:
                outcomes.append(submitted.context.run(_answer, submitted.item))
        return outcomes

    async def by_itself(self, item: int) -> str:
        self.alone.append(item)
        return f"{caller.get()}:alone {item}"


async def _submit_as(group: GroupCommit[int, str], name: str, item: int) -> str:
    caller.set(name)
    return await group.submit(item)


async def test_calls_that_arrive_together_share_a_batch_and_later_ones_form_the_next() -> None:
    recorder = Recorder()
    group: GroupCommit[int, str] = GroupCommit("test", recorder.write, alone=recorder.by_itself)
    first = [asyncio.create_task(_submit_as(group, f"c{i}", i)) for i in range(1, 4)]
    await asyncio.sleep(0.005)  # the first batch is being written
    later = [asyncio.create_task(_submit_as(group, f"c{i}", i)) for i in range(4, 6)]
    answers = await asyncio.gather(*first, *later)
    assert recorder.batches == [[1, 2, 3], [4, 5]]
    # Each answer was built in its own caller's context.
    assert answers == ["c1:10", "c2:20", "c3:30", "c4:40", "c5:50"]


async def test_batches_hold_at_most_max_batch_items() -> None:
    recorder = Recorder()
    group: GroupCommit[int, str] = GroupCommit("test", recorder.write, max_batch=2)
    await asyncio.gather(*(group.submit(i) for i in range(1, 6)))
    assert recorder.batches == [[1, 2], [3, 4], [5]]


async def test_an_item_error_reaches_only_its_caller_and_alone_items_are_applied_by_themselves() -> None:
    recorder = Recorder()
    group: GroupCommit[int, str] = GroupCommit("test", recorder.write, alone=recorder.by_itself)
    results = await asyncio.gather(
        _submit_as(group, "a", 1), _submit_as(group, "b", -1), _submit_as(group, "c", 0), return_exceptions=True
    )
    assert results[0] == "a:10"
    assert isinstance(results[1], ValueError)
    assert results[2] == "c:alone 0"
    assert recorder.alone == [0]


async def test_a_failed_batch_applies_each_item_alone_and_a_failed_single_item_raises() -> None:
    recorder = Recorder(fail_batches_over=1)
    group: GroupCommit[int, str] = GroupCommit("test", recorder.write, alone=recorder.by_itself)
    assert await asyncio.gather(_submit_as(group, "a", 1), _submit_as(group, "b", 2)) == ["a:alone 1", "b:alone 2"]

    failing = Recorder(fail_batches_over=0)
    single: GroupCommit[int, str] = GroupCommit("test", failing.write, alone=failing.by_itself)
    with pytest.raises(RuntimeError, match="transaction failed"):
        await single.submit(1)
    assert failing.alone == []


async def test_without_an_alone_function_a_failed_batch_raises_to_every_caller() -> None:
    recorder = Recorder(fail_batches_over=0)
    group: GroupCommit[int, str] = GroupCommit("test", recorder.write)
    results = await asyncio.gather(group.submit(1), group.submit(2), return_exceptions=True)
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]


async def test_a_writer_cancelled_mid_batch_cancels_its_waiting_callers() -> None:
    started = asyncio.Event()

    async def stuck(batch: Sequence[Submitted[int]]) -> list[str | Alone | BaseException]:
        started.set()
        await asyncio.Event().wait()
        return []

    group: GroupCommit[int, str] = GroupCommit("test", stuck)
    waiting = asyncio.create_task(group.submit(1))
    await started.wait()
    assert group._writer is not None
    group._writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_batch_of_one_runs_in_its_callers_context_and_a_larger_one_in_a_span_linking_every_caller() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    seen: list[object] = []

    async def write(batch: Sequence[Submitted[int]]) -> list[str | Alone | BaseException]:
        seen.append(trace.get_current_span().get_span_context().span_id)
        await asyncio.sleep(0.01)
        return ["ok"] * len(batch)

    group: GroupCommit[int, str] = GroupCommit("ingest", write, tracer=tracer)

    async def call(name: str, item: int) -> int:
        with tracer.start_as_current_span(name) as span:
            await group.submit(item)
            return span.get_span_context().span_id

    alone = await call("alone", 1)
    assert seen == [alone]
    together = await asyncio.gather(call("a", 2), call("b", 3))
    batch_span = next(s for s in exporter.get_finished_spans() if s.name == "ingest batch")
    assert seen[1] == batch_span.context.span_id
    assert sorted(link.context.span_id for link in batch_span.links) == sorted(together)


async def test_synchronous_batches_apply_a_batch_in_one_transaction_and_an_item_alone_in_its_own() -> None:
    transactions: list[str] = []
    current: contextvars.ContextVar[str] = contextvars.ContextVar("current", default="")

    async def run_in_transaction(work):  # type: ignore[no-untyped-def]
        transactions.append("session")
        return work("session")

    def apply(session: str, items: Sequence[tuple[int, contextvars.Context]]) -> list[str | BaseException]:
        assert session == "session"
        return [ValueError(f"{n} is odd") if n % 2 else context.run(current.get) for n, context in items]

    write, alone = synchronous_batches(run_in_transaction, apply)
    contexts = []
    for caller in ("a", "b"):
        current.set(caller)
        contexts.append(contextvars.copy_context())
    answers = await write([Submitted(2, contexts[0]), Submitted(3, contexts[1])])
    assert answers[0] == "a" and isinstance(answers[1], ValueError)  # each in its caller's context; a refusal its own
    assert transactions == ["session"]
    current.set("c")
    assert await alone(4) == "c"
    with pytest.raises(ValueError, match="5 is odd"):
        await alone(5)
    assert transactions == ["session"] * 3
