"""ensure_streams asks again when the server fails to create a stream's store, and gives up after its attempts."""

from typing import Any

import pytest
from nats.js.errors import ServerError

from plumbing import bus as bus_module
from plumbing.bus import Bus, StreamSpec

SPEC = StreamSpec(name="ENSURE_TEST", subjects=("ensure.test.>",))


def _failing_first(bus: Bus, failures: int) -> list[int]:
    """bus.js.add_stream refusing `failures` times as the server did once in a test run, then the real call."""
    calls: list[int] = []
    real = bus.js.add_stream

    async def add_stream(config: Any = None, **params: Any) -> Any:
        calls.append(1)
        if len(calls) <= failures:
            raise ServerError(code=500, err_code=10049, description="error creating store for stream")
        return await real(config, **params)

    bus.js.add_stream = add_stream  # type: ignore[method-assign]
    return calls


async def test_a_store_the_server_failed_to_create_is_asked_for_again(
    nats_bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bus_module, "STREAM_CREATE_PAUSE_SECONDS", 0.0)
    calls = _failing_first(nats_bus, failures=2)
    await nats_bus.ensure_streams([SPEC])
    assert len(calls) == 3
    info = await nats_bus.js.stream_info(SPEC.name)
    assert info.config.subjects == list(SPEC.subjects)


async def test_a_store_that_never_comes_fails_the_start(nats_bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus_module, "STREAM_CREATE_PAUSE_SECONDS", 0.0)
    calls = _failing_first(nats_bus, failures=bus_module.STREAM_CREATE_ATTEMPTS)
    with pytest.raises(ServerError):
        await nats_bus.ensure_streams([SPEC])
    assert len(calls) == bus_module.STREAM_CREATE_ATTEMPTS


async def test_a_stream_is_updated_only_where_it_differs_from_the_code(nats_bus: Bus) -> None:
    """Every start of every replica asks: an update that changes nothing would still undo a limit an administrator
    set that the code does not configure (a review saw the dead letters' limits reverted so)."""
    await nats_bus.ensure_streams([SPEC])
    info = await nats_bus.js.stream_info(SPEC.name)
    info.config.max_msgs = 1_000  # an administrator's `nats stream edit`
    await nats_bus.js.update_stream(info.config)
    await nats_bus.ensure_streams([SPEC])
    assert (await nats_bus.js.stream_info(SPEC.name)).config.max_msgs == 1_000
    await nats_bus.ensure_streams([StreamSpec(SPEC.name, SPEC.subjects, max_age_seconds=3600.0)])
    changed = (await nats_bus.js.stream_info(SPEC.name)).config
    assert changed.max_age == 3600.0
