"""The provisioner makes every stream and durable, and asks again while the server times out (a new cluster under
many provisioners at once), then gives up with the error."""

from typing import Any

import nats.errors
import pytest

from plumbing.bus import Bus
from services import nats_provision, streams


def _timing_out_first(bus: Bus, failures: int) -> list[int]:
    calls: list[int] = []
    real = bus.ensure_streams

    async def ensure_streams(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) <= failures:
            raise nats.errors.TimeoutError
        await real(*args, **kwargs)

    bus.ensure_streams = ensure_streams  # type: ignore[method-assign]
    return calls


async def test_everything_is_made_after_the_server_timed_out(nats_bus: Bus) -> None:
    calls = _timing_out_first(nats_bus, failures=2)
    await nats_provision.provision(nats_bus, within=30)
    assert len(calls) == 3
    for consumer in streams.CONSUMERS:
        info = await nats_bus.js.consumer_info(consumer.stream, consumer.durable)
        assert info.config.filter_subject == consumer.filter_subject


async def test_it_gives_up_with_the_error_after_its_time(nats_bus: Bus) -> None:
    _timing_out_first(nats_bus, failures=100)
    with pytest.raises(nats.errors.TimeoutError):
        await nats_provision.provision(nats_bus, within=0.3)
