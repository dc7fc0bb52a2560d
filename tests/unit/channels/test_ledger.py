"""Group commit of the dispatch ledger: items that queue during a write form the next batch; failures stay in theirs."""

import asyncio
from collections.abc import Sequence

import pytest

from services.channels.ledger import GroupCommit


class Recorder:
    """A write that keeps its batches and can be held open or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.writing = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_on: set[int] = set()

    async def write(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        self.writing.set()
        await self.gate.wait()
        if self.fail_on & set(items):
            raise RuntimeError("database locked")
        return [item * 10 for item in items]


async def test_callers_arriving_together_share_one_write_and_each_gets_its_own_result() -> None:
    recorder = Recorder()
    commit = GroupCommit("test", recorder.write, max_batch=100)
    results = await asyncio.gather(*(commit.submit(n) for n in range(5)))
    assert results == [0, 10, 20, 30, 40]
    assert recorder.batches == [[0, 1, 2, 3, 4]]


async def test_callers_arriving_during_a_write_form_the_next_batch() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    commit = GroupCommit("test", recorder.write, max_batch=100)
    first = asyncio.create_task(commit.submit(1))
    await recorder.writing.wait()
    later = [asyncio.create_task(commit.submit(n)) for n in (2, 3)]
    await asyncio.sleep(0)
    recorder.gate.set()
    assert await first == 10
    assert [await task for task in later] == [20, 30]
    assert recorder.batches == [[1], [2, 3]]


async def test_a_batch_never_exceeds_max_batch() -> None:
    recorder = Recorder()
    commit = GroupCommit("test", recorder.write, max_batch=2)
    await asyncio.gather(*(commit.submit(n) for n in range(5)))
    assert recorder.batches == [[0, 1], [2, 3], [4]]


async def test_a_failed_write_fails_every_caller_of_its_batch_and_no_other() -> None:
    recorder = Recorder()
    recorder.fail_on = {1}
    commit = GroupCommit("test", recorder.write, max_batch=2)
    outcomes = await asyncio.gather(*(commit.submit(n) for n in range(4)), return_exceptions=True)
    assert [type(o).__name__ for o in outcomes[:2]] == ["RuntimeError", "RuntimeError"]
    assert outcomes[2:] == [20, 30]
    with pytest.raises(RuntimeError):
        await commit.submit(1)
