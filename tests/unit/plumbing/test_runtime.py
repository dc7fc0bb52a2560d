"""A process's shutdown is bounded: closers that hang and exporters that wait are cut short at their bounds."""

import asyncio
import threading
import time
from typing import cast

import pytest

from plumbing import runtime
from plumbing.grpc_server import GrpcServer
from plumbing.runtime import ServiceProcess, within


class _Server:
    """Stands for a GrpcServer with no calls in flight."""

    async def stop(self, grace: float) -> None:
        return None


async def test_closers_run_in_reverse_order_and_one_that_hangs_is_cut_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "CLOSE_SECONDS", 0.2)
    closed: list[str] = []

    async def dispose() -> None:
        closed.append("database")

    async def drain() -> None:
        closed.append("bus")

    async def hangs() -> None:
        await asyncio.Event().wait()  # a NATS server that never answers the drain's flush

    process = ServiceProcess("test", cast(GrpcServer, _Server()), closers=[hangs, dispose, drain])
    started = time.monotonic()
    await asyncio.wait_for(process.stop(0), timeout=5)
    assert closed == ["bus", "database"]
    assert time.monotonic() - started < 1.5


async def test_a_closers_own_timeout_is_not_taken_for_the_bound() -> None:
    async def times_out() -> None:
        raise TimeoutError("flush timeout")

    process = ServiceProcess("test", cast(GrpcServer, _Server()), closers=[times_out])
    with pytest.raises(TimeoutError, match="flush timeout"):
        await process.stop(0)


def test_exporters_that_wait_are_left_behind_at_the_bound() -> None:
    release = threading.Event()
    done: list[str] = []

    def collector_away() -> None:
        release.wait(30)  # the span processor waiting for its queue to export

    started = time.monotonic()
    within(0.2, collector_away, lambda: done.append("metrics"))
    assert time.monotonic() - started < 1.5
    assert done == ["metrics"]
    release.set()
