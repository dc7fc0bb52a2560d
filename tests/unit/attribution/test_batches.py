"""Batches: calls that arrive while a batch is applied form the next one, and every call gets its own outcome."""

import asyncio

import pytest

from services.attribution.batches import Batches, Queued


async def test_calls_queued_behind_a_running_batch_are_applied_together() -> None:
    release, started = asyncio.Event(), asyncio.Event()
    applied: list[list[int]] = []

    async def apply(batch: list[Queued[int, str]]) -> None:
        applied.append([queued.item for queued in batch])
        started.set()
        await release.wait()
        for queued in batch:
            # Odd items are left to be applied on their own (None); even ones get an answer.
            queued.answer.set_result(f"done {queued.item}" if queued.item % 2 == 0 else None)

    batches: Batches[int, str] = Batches(apply, max_size=3)
    runner = asyncio.create_task(batches.run())
    first = asyncio.create_task(batches.submit(0))
    await started.wait()
    rest = [asyncio.create_task(batches.submit(item)) for item in range(1, 6)]
    # Let every call queue behind the running batch before it finishes.
    await asyncio.sleep(0)
    release.set()
    answers = await asyncio.gather(first, *rest)
    await batches.stop()
    await runner

    assert applied == [[0], [1, 2, 3], [4, 5]]
    assert answers == ["done 0", None, "done 2", None, "done 4", None]


async def test_a_failing_batch_fails_its_calls_instead_of_leaving_them_waiting() -> None:
    async def apply(batch: list[Queued[int, str]]) -> None:
        raise RuntimeError("defect")

    batches: Batches[int, str] = Batches(apply)
    runner = asyncio.create_task(batches.run())
    with pytest.raises(RuntimeError, match="defect"):
        await batches.submit(1)
    with pytest.raises(RuntimeError, match="defect"):
        await runner
