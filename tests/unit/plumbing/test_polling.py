"""The polling loop: steps until stopped, survives the failures it is told to, wakes early when asked."""

import asyncio

import pytest

from plumbing.polling import Poller


async def test_a_failed_step_is_logged_and_the_next_one_runs() -> None:
    calls: list[int] = []

    async def step() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise ConnectionError("database unreachable")
        if len(calls) == 3:
            await poller.stop()

    poller = Poller(step, 0.001, "poll_failed")
    await asyncio.wait_for(poller.run(), timeout=5)
    assert calls == [0, 1, 2]
    assert poller.stopping


async def test_a_failure_it_is_not_told_to_survive_ends_the_loop() -> None:
    async def step() -> None:
        raise KeyError("a bug")

    poller = Poller(step, 0.001, "poll_failed", retried=(ConnectionError,))
    with pytest.raises(KeyError):
        await asyncio.wait_for(poller.run(), timeout=5)


async def test_wake_runs_the_next_step_before_the_interval_ends() -> None:
    stepped = asyncio.Event()
    count = 0

    async def step() -> None:
        nonlocal count
        count += 1
        if count == 2:
            stepped.set()

    poller = Poller(step, 3600, "poll_failed")
    task = asyncio.create_task(poller.run())
    await asyncio.sleep(0.01)
    poller.wake()
    await asyncio.wait_for(stepped.wait(), timeout=5)
    await poller.stop()
    await asyncio.wait_for(task, timeout=5)
    assert count == 2
